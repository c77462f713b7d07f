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
        # (and the number be reused by another connection), but the kernel socket stays ours to shut down. Each
        # with whether it is kept (a kept connection's, `own`): closed by its connection, not at the attempt's end.
        self._watched: list[tuple[socket.socket, bool]] | None = []
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
        _watchdog.add(self, socket.fromfd(sock.fileno(), sock.family, sock.type), kept=False)

    def watch_own(self, own: socket.socket) -> None:
        """Shut down `own` (from `own`, a kept connection's) at the deadline; it stays open after the attempt."""
        if self.deadline is not None:
            _watchdog.add(self, own, kept=True)

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


def own(sock: socket.socket) -> socket.socket:
    """A duplicate of `sock`'s descriptor for a kept connection to have watched by each of its attempts
    (`Cutoff.watch_own`) rather than duplicate it per attempt; closed with `release`."""
    return socket.fromfd(sock.fileno(), sock.family, sock.type)


def release(own: socket.socket) -> None:
    """Close what `own` made, once its connection closes: under the watchdog's lock, so that it never shuts down
    a descriptor reused meanwhile."""
    with _watchdog._lock:
        own.close()


#: Seconds the watchdog sleeps with no attempt armed: one armed meanwhile wakes it only if its deadline is sooner.
IDLE_WAKE = 1.0


class _Watchdog:
    """One thread per process that cuts the sockets of every attempt whose deadline passed.

    It holds only the attempts in flight (at most one per worker thread) and sleeps until the earliest deadline (or
    `IDLE_WAKE` with none); an attempt that ends first is merely dropped from the set, and one armed wakes it only
    when its deadline comes before the watchdog would wake.
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

    def add(self, cutoff: Cutoff, own: socket.socket, *, kept: bool) -> None:
        with self._lock:
            if cutoff._watched is None:  # the attempt is over
                if not kept:
                    own.close()
                return
            cutoff._watched.append((own, kept))
            if cutoff.fired:
                _shut(own)

    def disarm(self, cutoff: Cutoff) -> None:
        with self._lock:
            self._armed.discard(cutoff)
            watched, cutoff._watched = cutoff._watched or [], None
        for own, kept in watched:
            if not kept:
                own.close()

    def _run(self) -> None:
        with self._lock:
            while True:
                now = time.monotonic()
                for cutoff in [c for c in self._armed if c.deadline is not None and c.deadline <= now]:
                    self._armed.discard(cutoff)
                    cutoff.fired = True
                    for own, _ in cutoff._watched or []:
                        _shut(own)
                # With nothing armed it still wakes now and then, so that an attempt armed meanwhile, whose deadline
                # is later (the usual case), need not wake it: that was a wake-up per attempt (bench/README.md,
                # 2026-12-04 15:51).
                deadlines = (c.deadline for c in self._armed if c.deadline is not None)
                self._wake_at = min(deadlines, default=now + IDLE_WAKE)
                self._lock.wait(self._wake_at - now)


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
