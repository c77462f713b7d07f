"""A successful attempt's release rides with the gate call of the process's next claim, within RELEASE_RIDES; a
failure's, and any release of a destination this process saw at its limit, go at once. Whatever rides, the slot
comes back to the fleet without another job to carry it."""

from __future__ import annotations

import time
from typing import Any

import pytest

from actors.channels.base import TransientError
from actors.flow import Limits, Outcome
from actors.flow.control import RELEASE_RIDES, FlowControl, Released
from ledger.timestamps import utcnow
from tests.actors.conftest import running_worker, submit, wait_for_status

KEY = "webhook:rides.example:443"


@pytest.fixture
def flow_posts(make_settings, database, dispatcher) -> tuple[FlowControl, list[tuple[Any, dict]]]:
    posts: list[tuple[Any, dict]] = []
    flow = FlowControl(
        database=database, dispatcher=dispatcher, settings=make_settings(), threads=8,
        post=lambda request, **how: posts.append((request, how)), clock=utcnow, rand=lambda: 0.5,
    )  # fmt: skip
    yield flow, posts
    keys = list(dispatcher.broker.client.scan_iter(match=f"{flow.gate.prefix}*{KEY}*"))
    if keys:
        dispatcher.broker.client.delete(*keys)


def test_a_successful_attempts_release_rides_and_a_failed_ones_goes_at_once(flow_posts):
    flow, posts = flow_posts
    assert flow.admit([(0, KEY, "r1")], [])[0].granted
    flow.finished(KEY, "r1", None)
    assert flow.admit([(0, KEY, "r2")], [])[0].granted
    flow.finished(KEY, "r2", TransientError("refused"))

    assert posts == [
        (Released(KEY, "r1", Outcome.SUCCESS), {"wait": RELEASE_RIDES}),
        (Released(KEY, "r2", Outcome.TRANSIENT), {}),
    ]


def test_a_destination_seen_at_its_limit_has_its_releases_go_at_once_to_wake_who_waits(flow_posts):
    flow, posts = flow_posts
    flow.defaults = Limits(concurrency=1, rate=None)
    admissions = flow.admit([(0, KEY, "r1"), (1, KEY, "r2")], [])
    assert [a.granted for a in admissions.values()] == [True, False]

    flow.finished(KEY, "r1", None)

    assert posts == [(Released(KEY, "r1", Outcome.SUCCESS), {})]


def test_a_riding_release_gives_the_slot_back_with_no_other_job_to_carry_it(make_settings, database, dispatcher):
    settings = make_settings(WJP_WEBHOOK_ALLOW_PRIVATE="true")
    with running_worker(settings, database) as delivery:
        job_id = submit(database, dispatcher, settings, destination="log")
        wait_for_status(database, job_id)
        gate = delivery.flow.gate  # type: ignore[union-attr]
        deadline = time.monotonic() + 30
        while gate.inspect(["log"])[0].in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
        assert gate.inspect(["log"])[0].in_flight == 0
