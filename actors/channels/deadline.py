"""An attempt's deadline: every socket operation gets the time left, and at the deadline the sockets are cut.

A per-operation timeout cannot bound a peer that answers slowly or trickles bytes (each byte restarts it), and
Dramatiq's time limit cannot interrupt a blocked socket call. So the channel watches the sockets of its attempt
under a `Cutoff`, and one watchdog thread per process shuts them down at the deadline: a blocked read or write
wakes at once with an error, and the peer sees the connection end.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
from types import TracebackType


class Cutoff:
    """One attempt's deadline and the sockets it has watched; the channel enters it around the attempt.

    A deadline of None (a caller delivering without a claim) cuts nothing and leaves every timeout as it is.
    """

    __slots__ = ("_previous", "_watched", "deadline", "fired", "started")

    def __init__(self, deadline: float | None) -> None:
        #: The monotonic instant the attempt must end by, or None.
        self.deadline = deadline
        self.started = time.monotonic()
        #: Whether the watchdog cut the sockets.
        self.fired = False
        # Duplicates of the watched descriptors, ours alone: the library may close its own socket at any time
        # (and the number be reused by another connection), but the kernel socket stays ours to shut down.
        self._watched: list[socket.socket] | None = []
        self._previous: Cutoff | None = None

    def __enter__(self) -> Cutoff:
        self._previous = getattr(_current, "cutoff", None)
        _current.cutoff = self
        if self.deadline is not None:
            _watchdog.arm(self)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        _current.cutoff = self._previous
        if self.deadline is not None:
            _watchdog.disarm(self)

    @property
    def expired(self) -> bool:
        """Whether the deadline has passed (or the watchdog already cut the sockets)."""
        return self.fired or (self.deadline is not None and time.monotonic() >= self.deadline)

    def left(self, timeout: float) -> float:
        """`timeout` cut to the time left before the deadline; zero or less when none is left."""
        if self.deadline is None:
            return timeout
        return min(timeout, self.deadline - time.monotonic())

    def watch(self, sock: socket.socket) -> None:
        """Shut `sock` down at the deadline (at once if it has passed); a closed socket is ignored."""
        if self.deadline is None or sock.fileno() < 0:
            return
        own = socket.fromfd(sock.fileno(), sock.family, sock.type)
        _watchdog.add(self, own)

    def reason(self, receiver: str) -> str:
        """The error text of an attempt cut at its deadline."""
        budget = (self.deadline or self.started) - self.started
        return f"{receiver} did not answer within the attempt's deadline of {max(budget, 0.0):.1f}s"


def current() -> Cutoff | None:
    """The cutoff the calling thread's attempt runs under, if any."""
    return getattr(_current, "cutoff", None)


def watch(sock: socket.socket) -> None:
    """Watch `sock` under the calling thread's cutoff, if it has one."""
    cutoff = current()
    if cutoff is not None:
        cutoff.watch(sock)


class _Watchdog:
    """One thread per process that cuts the sockets of every attempt whose deadline passed.

    It holds only the attempts in flight (at most one per worker thread) and sleeps until the earliest deadline;
    an attempt that ends first is merely dropped from the set.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._armed: set[Cutoff] = set()
        self._wake_at = math.inf
        self._thread: threading.Thread | None = None

    def arm(self, cutoff: Cutoff) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wjp-deadline", daemon=True)
                self._thread.start()
            self._armed.add(cutoff)
            if cutoff.deadline is not None and cutoff.deadline < self._wake_at:
                self._lock.notify()

    def add(self, cutoff: Cutoff, own: socket.socket) -> None:
        with self._lock:
            if cutoff._watched is None:  # the attempt is over
                own.close()
                return
            cutoff._watched.append(own)
            if cutoff.fired:
                _shut(own)

    def disarm(self, cutoff: Cutoff) -> None:
        with self._lock:
            self._armed.discard(cutoff)
            watched, cutoff._watched = cutoff._watched or [], None
        for own in watched:
            own.close()

    def _run(self) -> None:
        with self._lock:
            while True:
                now = time.monotonic()
                for cutoff in [c for c in self._armed if c.deadline is not None and c.deadline <= now]:
                    self._armed.discard(cutoff)
                    cutoff.fired = True
                    for own in cutoff._watched or []:
                        _shut(own)
                self._wake_at = min((c.deadline for c in self._armed if c.deadline is not None), default=math.inf)
                self._lock.wait(None if self._wake_at == math.inf else self._wake_at - now)


def _shut(own: socket.socket) -> None:
    # Shutting down (not closing) the kernel socket wakes a read or write blocked on it in another thread, TLS
    # or not, and sends the peer a FIN; the owner's later close frees it as usual.
    with contextlib.suppress(OSError):  # already reset or shut down by the peer
        own.shutdown(socket.SHUT_RDWR)


_current = threading.local()
_watchdog = _Watchdog()


def _reset_after_fork() -> None:
    # Dramatiq forks its worker processes; a child must not inherit a watchdog whose thread did not survive.
    global _watchdog
    _watchdog = _Watchdog()


os.register_at_fork(after_in_child=_reset_after_fork)
