"""Where a Dramatiq worker process's log lines go: straight to the stderr it inherited, gathered into few writes.

Dramatiq sends every line a worker process logs through a pipe to its main process, which wakes up to copy
it to stderr. Every job logs two lines (its outcome, and the `log` channel its notification), so the main
process was copying lines all day: 36–76 µs of CPU per job, measured. A write of its own per line still had the
threads meet at the handler's lock under load, so the lines of a moment go out together (bench/README.md,
2026-12-04 15:51).
"""

from __future__ import annotations

import collections
import logging
import multiprocessing.util
import os
import select
import sys
import threading
import time

from dramatiq.compat import StreamablePipe

#: Most seconds a line waits before it is written: a process killed with SIGKILL loses at most this much of its log.
GATHER_SECONDS = 0.02


class _Gathered:
    """The lines of this process waiting for stderr, written by a thread of its own at most `GATHER_SECONDS` after
    the first of them, in writes of whole lines of up to PIPE_BUF bytes (each one atomic, even on a pipe that
    other processes write to)."""

    def __init__(self) -> None:
        self._begin()
        # Dramatiq forks its worker processes: each gathers its own lines, with a thread of its own.
        os.register_at_fork(after_in_child=self._begin)

    def _begin(self) -> None:
        self._lines: collections.deque[bytes] = collections.deque()
        self._pending = threading.Event()
        #: Held while writing, so that lines leave in the order they came, whoever writes them.
        self._writing = threading.Lock()
        self._starting = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, data: bytes) -> None:
        self._lines.append(data)
        if self._thread is None:
            self._start()
        if not self._pending.is_set():
            self._pending.set()

    def write_out(self) -> None:
        """Write every line gathered so far, now."""
        with self._writing:
            chunk: list[bytes] = []
            size = 0
            while self._lines:
                line = self._lines.popleft()
                if chunk and size + len(line) > select.PIPE_BUF:
                    _write(b"".join(chunk))
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line)
            if chunk:
                _write(b"".join(chunk))

    def _start(self) -> None:
        # Started by the process's first line, and written out at its exit: multiprocessing runs its finalizers
        # there, and ends the process without `atexit`.
        with self._starting:
            if self._thread is None:
                thread = threading.Thread(target=self._serve, name="wjp-log-lines", daemon=True)
                thread.start()
                multiprocessing.util.Finalize(None, self.write_out, exitpriority=-100)
                self._thread = thread

    def _serve(self) -> None:
        while True:
            self._pending.wait()
            time.sleep(GATHER_SECONDS)
            self._pending.clear()
            self.write_out()


def _write(data: bytes) -> None:
    while data:
        data = data[os.write(2, data) :]


_GATHERED = _Gathered()


def write_out_log_lines() -> None:
    """Write the log lines this process has gathered so far (a stopping worker, once its last lines are logged)."""
    _GATHERED.write_out()


class _StraightToStderr:
    """A line up to PIPE_BUF bytes goes to the inherited stderr with the other lines of its moment (`_Gathered`), in
    one write that no other process's line can split; a longer one (a traceback) takes the pipe, after the lines
    before it, so Dramatiq's main process keeps it whole."""

    def __init__(self, pipe: StreamablePipe) -> None:
        self.pipe = pipe

    def write(self, text: str) -> None:
        data = text.encode("utf-8", errors="replace")
        if len(data) > select.PIPE_BUF:
            _GATHERED.write_out()
            self.pipe.write(text)
            return
        _GATHERED.add(data)

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
