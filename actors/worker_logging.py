"""Where a Dramatiq worker process's log lines go: straight to the stderr it inherited.

Dramatiq sends every line a worker process logs through a pipe to its main process, which wakes up to copy
it to stderr. Every job logs two lines (its outcome, and the `log` channel its notification), so the main
process was copying lines all day: 36–76 µs of CPU per job, measured (bench/README.md).
"""

from __future__ import annotations

import logging
import os
import select
import sys

from dramatiq.compat import StreamablePipe


class _StraightToStderr:
    """A line up to PIPE_BUF bytes goes to the inherited stderr in one write, which no other process's line can
    split; a longer one (a traceback) still takes the pipe, so Dramatiq's main process keeps it whole."""

    def __init__(self, pipe: StreamablePipe) -> None:
        self.pipe = pipe

    def write(self, text: str) -> None:
        data = text.encode("utf-8", errors="replace")
        if len(data) > select.PIPE_BUF:
            self.pipe.write(text)
            return
        while data:
            data = data[os.write(2, data) :]

    def flush(self) -> None:
        pass


def log_without_callers() -> None:
    """In a worker process: log records leave out where they were logged from (file, line, function), which no
    format of ours shows and which costs a walk up the stack for every line (the logging HOWTO's "Optimization")."""
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logMultiprocessing = False


def log_straight_to_stderr() -> None:
    """In a Dramatiq worker process: send the lines of the handler Dramatiq set up to stderr, not to the pipe.

    With JSON logs the handler is the one this process inherited from its main process (`wjp worker`),
    writing to the inherited stderr: its long lines go through Dramatiq's pipe (now `sys.stderr`) likewise."""
    pipe = sys.stderr if isinstance(sys.stderr, StreamablePipe) else None
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.StreamHandler):
            continue
        if isinstance(handler.stream, StreamablePipe):
            handler.setStream(_StraightToStderr(handler.stream))  # type: ignore[arg-type]
        elif pipe is not None and handler.stream is sys.__stderr__:
            handler.setStream(_StraightToStderr(pipe))  # type: ignore[arg-type]
