"""The sender of the callbacks armed claimed for their worker: its senders admit their own groups."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

from actors.callback_sender import ArmedSender
from ledger.claims import ClaimedJob, Finished
from ledger.timestamps import utcnow


class Ledger:
    def flush(self, timeout: float) -> bool:
        return True


class Delivery:
    """Admits every group at once; each task notes its job and waits for `release`."""

    def __init__(self) -> None:
        self.ledger = Ledger()
        self.groups: list[int] = []
        self.sent: list[uuid.UUID] = []
        self.release = threading.Event()
        self._lock = threading.Lock()

    def admit_claimed(self, group: list[tuple[ClaimedJob, Finished | None]]) -> list[Callable[[], None]]:
        self.groups.append(len(group))
        return [lambda job=job: self._send(job.id) for job, _ in group]

    def _send(self, job_id: uuid.UUID) -> None:
        self.release.wait(10)
        with self._lock:
            self.sent.append(job_id)


def jobs(count: int) -> list[ClaimedJob]:
    return [ClaimedJob(uuid.uuid4(), "r", "log", "m", None, None, 1, 5, "http://example.test/") for _ in range(count)]


def test_every_callback_is_sent_once_by_senders_that_admit_their_own_groups_with_no_thread_beside_them() -> None:
    delivery = Delivery()
    sender = ArmedSender(None, threads=3)  # type: ignore[arg-type]
    sender.attach(delivery, 3)  # type: ignore[arg-type]
    now = utcnow()
    before = set(threading.enumerate())
    posted = [job for _ in range(3) for job in jobs(4)]
    for start in range(0, len(posted), 4):
        batch = posted[start : start + 4]
        sender.post(batch, {job.id: Finished("log", "k", None, now, now) for job in batch})

    callback_threads = [t.name for t in set(threading.enumerate()) - before]
    delivery.release.set()
    assert sender.flush(10)
    assert sorted(delivery.sent) == sorted(job.id for job in posted)
    assert callback_threads == ["wjp-callback"] * 3
    assert sum(delivery.groups) == len(posted) and max(delivery.groups) <= 3
