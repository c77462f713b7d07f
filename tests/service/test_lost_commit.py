"""An intake whose INSERT committed but whose answer the network lost (`tests/pg_proxy.py`): `Database.run` retries
it, and the request is answered as created (202, its own job id) and its message sent, not as a replay."""

from __future__ import annotations

import asyncio
import uuid

from ledger.database import Database
from ledger.intake import Accepting, Intake, NewNotification
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch
from service.intake import GroupIntake
from service.offload import Offload
from tests.pg_proxy import LosingProxy


def request(key: str) -> NewNotification:
    return NewNotification(idempotency_key=key, recipient="someone", channel="log", message="hi", max_attempts=3)


def test_an_intake_whose_answer_was_lost_is_created_and_dispatched_not_replayed(
    postgres_db, postgres_server_url, dispatcher
):
    with LosingProxy(postgres_server_url) as proxy:
        lossy = Database(proxy.url)
        groups = GroupIntake(lossy, lambda dispatches: dispatcher.send(dispatches, now=utcnow()), Offload(1))
        # The intake thread makes its connection (and prepares its statement) before the fault.
        first = Accepting(request(uuid.uuid4().hex), utcnow(), True)
        assert asyncio.run(groups.accept(first)).outcome is Intake.CREATED

        proxy.arm()
        item = Accepting(request(uuid.uuid4().hex), utcnow(), True)
        result = asyncio.run(groups.accept(item))
        lossy.dispose()

    assert proxy.lost.is_set()
    assert result.outcome is Intake.CREATED
    assert result.job_id == item.job_id
    assert dispatcher.missing([Dispatch(result.job_id, 1, result.next_attempt_at)]) == []
