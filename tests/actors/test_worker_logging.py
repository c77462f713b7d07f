"""A worker process's log lines: short ones straight to stderr, long ones through Dramatiq's pipe."""

from __future__ import annotations

import logging
import multiprocessing
import select
import sys

import pytest
from dramatiq.compat import StreamablePipe

from actors.worker_logging import log_straight_to_stderr


@pytest.fixture
def dramatiq_pipe():
    """The root handler Dramatiq sets up in a worker process writes to a pipe its main process reads: its read end."""
    read_end, write_end = multiprocessing.Pipe(duplex=False)
    handler = logging.StreamHandler(StreamablePipe(write_end))  # type: ignore[arg-type]
    root = logging.getLogger()
    root.addHandler(handler)
    yield read_end
    root.removeHandler(handler)
    read_end.close()
    write_end.close()


def test_a_line_that_fits_one_atomic_write_goes_to_stderr_and_a_longer_one_through_the_pipe(dramatiq_pipe, capfd):
    read_end = dramatiq_pipe
    log_straight_to_stderr()
    logger = logging.getLogger("wjp.test.worker_logging")
    logger.warning("✅ Job 3f7e4f success")
    long_line = "x" * select.PIPE_BUF
    logger.warning(long_line)

    assert capfd.readouterr().err == "✅ Job 3f7e4f success\n"
    assert read_end.poll(1)
    assert read_end.recv_bytes().decode() == long_line + "\n"
    assert not read_end.poll(0)


def test_handlers_that_do_not_write_to_dramatiqs_pipe_are_left_alone(capsys):
    handler = logging.StreamHandler()
    stream = handler.stream
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        log_straight_to_stderr()
        assert handler.stream is stream
    finally:
        root.removeHandler(handler)


def test_with_json_logs_the_inherited_stderr_handler_sends_long_lines_through_the_pipe(capfd, monkeypatch):
    """`wjp worker` sets the root handler up on stderr before Dramatiq forks; in a worker process
    Dramatiq's pipe is `sys.stderr`, and a line too long for one atomic write goes through it."""
    read_end, write_end = multiprocessing.Pipe(duplex=False)
    handler = logging.StreamHandler(sys.__stderr__)
    root = logging.getLogger()
    root.addHandler(handler)
    monkeypatch.setattr(sys, "stderr", StreamablePipe(write_end))
    try:
        log_straight_to_stderr()
        logger = logging.getLogger("wjp.test.worker_logging")
        logger.warning('{"event": "short"}')
        long_line = "y" * select.PIPE_BUF
        logger.warning(long_line)
        assert capfd.readouterr().err == '{"event": "short"}\n'
        assert read_end.poll(1)
        assert read_end.recv_bytes().decode() == long_line + "\n"
    finally:
        root.removeHandler(handler)
        read_end.close()
        write_end.close()
