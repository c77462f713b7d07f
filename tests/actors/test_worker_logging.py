"""A worker process's log lines: short ones straight to stderr, gathered into few writes; long ones through Dramatiq's
pipe."""

from __future__ import annotations

import logging
import multiprocessing
import os
import select
import sys
import time

import pytest
from dramatiq.compat import StreamablePipe

from actors import worker_logging
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


@pytest.fixture
def gathered(monkeypatch):
    """A process's root handler writing through `log_straight_to_stderr`, its lines gathered for a long while."""
    monkeypatch.setattr(worker_logging, "GATHER_SECONDS", 3600.0)
    read_end, write_end = multiprocessing.Pipe(duplex=False)
    handler = logging.StreamHandler(StreamablePipe(write_end))  # type: ignore[arg-type]
    root = logging.getLogger()
    root.addHandler(handler)
    log_straight_to_stderr()
    yield logging.getLogger("wjp.test.worker_logging")
    worker_logging.write_out_log_lines()
    root.removeHandler(handler)
    read_end.close()
    write_end.close()


def test_short_lines_are_gathered_and_written_out_together_in_their_order(gathered, monkeypatch):
    writes: list[bytes] = []
    monkeypatch.setattr(worker_logging, "_write", writes.append)
    for n in range(3):
        gathered.warning("✅ Job %d success", n)
    worker_logging.write_out_log_lines()

    assert writes == ["✅ Job 0 success\n✅ Job 1 success\n✅ Job 2 success\n".encode()]


def test_gathered_lines_are_written_in_whole_lines_of_at_most_one_atomic_write(gathered, monkeypatch):
    writes: list[bytes] = []
    monkeypatch.setattr(worker_logging, "_write", writes.append)
    lines = [f"notification job={n} " + "m" * 150 for n in range(100)]
    for line in lines:
        gathered.warning(line)
    worker_logging.write_out_log_lines()

    assert len(writes) > 1
    assert all(len(data) <= select.PIPE_BUF and data.endswith(b"\n") for data in writes)
    assert b"".join(writes).decode().splitlines() == lines


def _log_one_line_and_leave_it_to_the_thread() -> None:
    worker_logging.GATHER_SECONDS = 0.01
    _, write_end = multiprocessing.Pipe(duplex=False)
    logging.getLogger().handlers = [logging.StreamHandler(StreamablePipe(write_end))]  # type: ignore[arg-type]
    log_straight_to_stderr()
    logging.getLogger("wjp.test.worker_logging").warning("✅ Job 5a1b success")
    for _ in range(3000):  # the thread writes it within GATHER_SECONDS; this waits far longer before giving up
        if not worker_logging._GATHERED._lines:
            break
        time.sleep(0.01)
    time.sleep(0.1)  # the thread's write, once it has taken the line
    os._exit(0)  # no finalizer: only the thread can have written the line


def test_gathered_lines_are_written_by_their_thread_without_being_asked(capfd):
    process = multiprocessing.get_context("fork").Process(target=_log_one_line_and_leave_it_to_the_thread)
    process.start()
    process.join(60)

    assert process.exitcode == 0
    assert capfd.readouterr().err == "✅ Job 5a1b success\n"


def _log_one_line_and_return() -> None:
    worker_logging.GATHER_SECONDS = 3600.0
    _, write_end = multiprocessing.Pipe(duplex=False)
    logging.getLogger().handlers = [logging.StreamHandler(StreamablePipe(write_end))]  # type: ignore[arg-type]
    log_straight_to_stderr()
    logging.getLogger("wjp.test.worker_logging").warning("✅ Job 9c0d success")


def test_a_worker_process_writes_its_gathered_lines_as_it_exits(capfd):
    process = multiprocessing.get_context("fork").Process(target=_log_one_line_and_return)
    process.start()
    process.join(30)

    assert process.exitcode == 0
    assert capfd.readouterr().err == "✅ Job 9c0d success\n"
