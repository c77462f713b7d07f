"""Each worker process's share of its threads per destination (SPEC: `WJP_DESTINATION_SHARE`), bound only on the
destinations that hold threads: unknown ones, slow ones, and those whose oldest attempt in flight runs long. The
slower a destination, the fewer threads it may hold (down to one), and one never seen to finish is sent one attempt
at a time: a black hole holds one thread per process, not the whole share, until its circuit opens."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: A destination answering well under this gives its threads back at once, so it may use them all; a black hole or
#: a slow one is caught within it (its attempts' average, or its oldest attempt in flight, reaches it).
SLOW_ATTEMPT = 0.5
#: Attempts a destination finishes in this process before its pace is trusted: until then it is held to the share.
KNOWN_AFTER = 3
#: Weight of an attempt's duration in its destination's moving average.
AVERAGE_WEIGHT = 0.3
#: Destinations a process remembers, the least recently used forgotten first: one forgotten is merely unknown
#: again (held to the share for its next few attempts), and a worker talking to ever new hosts stays bounded.
REMEMBERED = 10_000


@dataclass
class _Pace:
    """One destination's attempts in this process."""

    in_flight: int = 0
    #: Start of each attempt in flight, by message id, oldest first (taken in order of a monotonic clock).
    started: dict[str, float] = field(default_factory=dict)
    average: float = 0.0
    finished: int = 0


class Shares:
    """Counts each destination's attempts in flight in this process; `take` refuses one beyond what its pace allows
    (at most `share` while the destination holds its threads). Thread-safe."""

    def __init__(
        self, share: int, *, monotonic: Callable[[], float] = time.monotonic, remembered: int = REMEMBERED
    ) -> None:
        self.share = share
        self.remembered = remembered
        self._monotonic = monotonic
        self._paces: dict[str, _Pace] = {}
        self._lock = threading.Lock()

    def take(self, key: str, rid: str) -> bool:
        """Whether an attempt of `key` (message `rid`) may start; if so it counts until `give`."""
        now = self._monotonic()
        with self._lock:
            pace = self._paces.pop(key, None)
            if pace is None:
                self._forget_an_idle_one()
                pace = _Pace()
            self._paces[key] = pace  # the most recently used last
            if pace.in_flight >= self._most_in_flight(pace, now):
                return False
            pace.in_flight += 1
            pace.started.setdefault(rid, now)
            return True

    def give(self, key: str, rid: str, *, attempted: bool) -> None:
        """The attempt of `key` taken for `rid` ended; `attempted`: it went to the receiver (not merely unclaimed),
        so its duration tells the destination's pace."""
        now = self._monotonic()
        with self._lock:
            pace = self._paces[key]
            pace.in_flight -= 1
            started = pace.started.pop(rid, None)
            if not attempted or started is None:
                return
            duration = now - started
            pace.average = duration if pace.finished == 0 else pace.average + AVERAGE_WEIGHT * (duration - pace.average)
            pace.finished += 1

    def _forget_an_idle_one(self) -> None:
        if len(self._paces) >= self.remembered:
            idle = next((key for key, pace in self._paces.items() if pace.in_flight == 0), None)
            if idle is not None:
                del self._paces[idle]

    def _most_in_flight(self, pace: _Pace, now: float) -> float:
        """How many attempts of the destination may run at once here: any number while it answers fast; one until
        it has finished one; else the share, scaled down by how long its attempts take (Little's law: each may hold
        about `share` threads for SLOW_ATTEMPT), never below one."""
        oldest = next(iter(pace.started.values()), None)
        running = 0.0 if oldest is None else now - oldest
        if pace.finished == 0:
            return 1
        duration = max(pace.average, running)
        if pace.finished >= KNOWN_AFTER and duration < SLOW_ATTEMPT:
            return math.inf
        return max(1, min(self.share, math.floor(self.share * SLOW_ATTEMPT / duration)))
