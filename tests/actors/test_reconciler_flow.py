"""The reconciler's part in flow control: it wakes waiting lists where leases of killed workers expired (no
release will), and fails the jobs deferred past WJP_MAX_DEFERRAL that no worker looks at any more."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import redis

from actors.flow import AdmitRequest, BreakerPolicy, Gate, Limits, QueueKeys
from ledger import transitions
from ledger.states import Status
from ledger.timestamps import utcnow
from tests.actors.conftest import make_reconciler, submit, wait_for_status


def test_a_pass_fails_the_jobs_deferred_past_the_most_deferral_naming_destination_and_reason(
    make_settings, database, dispatcher
):
    settings = make_settings(WJP_MAX_DEFERRAL="60")
    destination = f"webhook:{uuid.uuid4().hex[:8]}.example:443"
    stale, fresh = (submit(database, None, settings, destination=destination) for _ in range(2))
    long_ago = utcnow() - timedelta(seconds=61)
    database.run(lambda conn: transitions.record_deferrals(conn, [(stale, 1, "throttled")], now=long_ago))
    database.run(lambda conn: transitions.record_deferrals(conn, [(fresh, 1, "limit")], now=utcnow()))

    report = make_reconciler(settings, database, dispatcher).run_once()

    assert report.failed == 1
    job = wait_for_status(database, stale, {Status.FAILED}, timeout=1)
    assert job.last_error == f"waited more than 60 s on destination {destination}: throttled"
    assert wait_for_status(database, fresh, {Status.PENDING}, timeout=1).attempts == 0


def test_a_pass_wakes_the_messages_waiting_on_room_a_killed_workers_lease_left(
    make_settings, database, dispatcher, redis_server_url, queue_name
):
    settings = make_settings(WJP_DESTINATION_CONCURRENCY="1")
    client = redis.Redis.from_url(redis_server_url)
    gate, destination = Gate(client), f"webhook:{uuid.uuid4().hex[:8]}.example:443"
    job_id = submit(database, dispatcher, settings, destination=destination)
    rid = f"{job_id}.1"
    queue = QueueKeys.of(queue_name, "killed-worker")
    # A worker fetched the message (it is in its acks set) while another, later killed, held the only slot.
    client.lrem(queue.queue, 0, rid)
    client.sadd(queue.acks, rid)
    limits = Limits(concurrency=1, rate=None)
    policy = BreakerPolicy()
    held = gate.batch([AdmitRequest(destination, "killed", limits)], [], queue=queue, lease_seconds=0.3, breaker=policy)
    parked = gate.batch([AdmitRequest(destination, rid, limits, park=rid)], [], queue=queue, lease_seconds=0.3,
                        breaker=policy)  # fmt: skip
    assert held[0].granted and parked[0].parked
    reconciler = make_reconciler(settings, database, dispatcher)

    reconciler.run_once()
    assert client.llen(queue.queue) == 0, "no room while the killed worker's lease lives"
    while gate.inspect([destination])[0].in_flight:
        time.sleep(0.05)
    reconciler.run_once()

    assert client.lrange(queue.queue, 0, -1) == [rid.encode()]
    assert gate.waiting(queue) == []
