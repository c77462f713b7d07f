"""Recording a deferral in the ledger, through a real Dramatiq worker and a black-holed receiver: the record is
written apart from the claims, so that a slow one never holds back another destination's jobs."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from actors.broker import Dispatcher, make_broker
from actors.channels.webhook import WebhookChannel
from actors.flow.control import Deferred, awaiting_lift
from actors.flow.shares import KNOWN_AFTER
from ledger import queries
from ledger.schema import jobs
from ledger.states import Status
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch
from tests.actors.conftest import running_worker, settings_builder, submit, wait_for_status, wait_until
from tests.actors.test_destinations import black_hole, deferral_reason, webhook_job
from tests.actors.test_flow_circuit import reset_by_command, tripped_circuit
from tests.flow_checks import gate_of
from tests.webhook_sink import Reply, webhook_sink


def blocked_by(database, holder_pid: int) -> int:
    """Sessions waiting for a lock that backend `holder_pid` holds."""
    query = text("SELECT count(*) FROM pg_stat_activity WHERE :holder = ANY(pg_blocking_pids(pid))")
    return database.run(lambda conn: conn.execute(query, {"holder": holder_pid}).scalar_one())


def black_hole_worker(postgres_db, redis_server_url, queue_name, tmp_path):  # type: ignore[no-untyped-def]
    """Settings, a dispatcher and a 4-thread webhook worker (not started) whose attempts to a black hole outlast
    the test."""
    settings = settings_builder(postgres_db, redis_server_url, queue_name, tmp_path)(
        WJP_WEBHOOK_ALLOW_PRIVATE="true", WJP_WEBHOOK_TIMEOUT="20", WJP_VISIBILITY_TIMEOUT="30"
    )
    dispatcher = Dispatcher(make_broker(redis_server_url), queue_name)
    worker = running_worker(settings, postgres_db, channels={"webhook": WebhookChannel(settings.channels)}, threads=4)
    return settings, dispatcher, worker


def test_a_deferral_whose_record_waits_on_its_row_holds_back_no_other_destination(
    postgres_db, redis_server_url, queue_name, tmp_path
):
    settings, dispatcher, worker = black_hole_worker(postgres_db, redis_server_url, queue_name, tmp_path)
    with worker, webhook_sink() as healthy, black_hole() as hole:
        destination = f"webhook:127.0.0.1:{hole.port}"
        webhook_job(postgres_db, dispatcher, settings, hole.port)
        wait_until(lambda: hole.open == 1, "the hole holds its one attempt (never seen to answer: one at a time)")
        waiting = submit(
            postgres_db, None, settings, channel="webhook", recipient=f"http://127.0.0.1:{hole.port}/hook",
            destination=destination,
        )  # fmt: skip
        # Its row held by a transaction of ours, as a busy ledger might hold it: its deferral's record must wait.
        with postgres_db.engine.connect() as holder, holder.begin():
            seq = holder.execute(select(jobs.c.dispatch_seq).where(jobs.c.id == waiting).with_for_update()).scalar_one()
            holder_pid = holder.execute(text("SELECT pg_backend_pid()")).scalar_one()
            now = utcnow()
            dispatcher.send([Dispatch(waiting, seq, now, destination)], now=now)
            wait_until(lambda: blocked_by(postgres_db, holder_pid) > 0, "the deferral's record waits for the row")
            flowing = [webhook_job(postgres_db, dispatcher, settings, healthy.server.server_address[1])
                       for _ in range(3)]  # fmt: skip
            done = [wait_for_status(postgres_db, job_id) for job_id in flowing]
        wait_until(lambda: deferral_reason(postgres_db, waiting) == "limit", "the deferral is recorded once free")

    assert {job.status for job in done} == {Status.SUCCESS}, "the other destination's jobs are claimed meanwhile"


def lock_row(conn, job_id) -> int:  # type: ignore[no-untyped-def]
    """Hold `job_id`'s row in `conn`'s open transaction, as a busy ledger might; the backend's pid."""
    conn.execute(select(jobs.c.id).where(jobs.c.id == job_id).with_for_update())
    return conn.execute(text("SELECT pg_backend_pid()")).scalar_one()


def test_a_deferred_claim_is_answered_without_waiting_for_its_batch_s_ledger_statement(
    postgres_db, redis_server_url, queue_name, tmp_path
):
    settings, dispatcher, worker = black_hole_worker(postgres_db, redis_server_url, queue_name, tmp_path)
    with worker as delivery, webhook_sink() as healthy, black_hole() as hole:
        webhook_job(postgres_db, dispatcher, settings, hole.port)
        wait_until(lambda: hole.open == 1, "the hole holds its one attempt (never seen to answer: one at a time)")
        port = healthy.server.server_address[1]
        # The healthy receiver seen to answer fast, so that its attempts are no longer taken one at a time.
        for _ in range(KNOWN_AFTER):
            wait_for_status(postgres_db, webhook_job(postgres_db, dispatcher, settings, port))
        first, held = (
            submit(postgres_db, None, settings, channel="webhook", recipient=f"http://127.0.0.1:{port}/hook",
                   destination=f"webhook:127.0.0.1:{port}")
            for _ in range(2)
        )  # fmt: skip
        deferred = submit(
            postgres_db, None, settings, channel="webhook", recipient=f"http://127.0.0.1:{hole.port}/hook",
            destination=f"webhook:127.0.0.1:{hole.port}",
        )  # fmt: skip
        dispatches = {job_id: postgres_db.run(lambda conn, j=job_id: queries.dispatch_state(conn, j))
                      for job_id in (first, held, deferred)}  # fmt: skip

        def send(*job_ids) -> None:  # type: ignore[no-untyped-def]
            now = utcnow()
            dispatcher.send([Dispatch(j, dispatches[j].dispatch_seq, now, webhook_key(j)) for j in job_ids], now=now)

        def webhook_key(job_id) -> str:  # type: ignore[no-untyped-def]
            return f"webhook:127.0.0.1:{hole.port if job_id == deferred else port}"

        with postgres_db.engine.connect() as a, postgres_db.engine.connect() as b:
            a.begin()
            b.begin()
            a_pid, b_pid = lock_row(a, first), lock_row(b, held)
            send(first)
            wait_until(lambda: blocked_by(postgres_db, a_pid) > 0, "the first batch's statement waits for its row")
            send(deferred, held)
            # Both claims queued behind the first batch, so that the next one carries them together.
            wait_until(lambda: delivery.ledger._waiting.qsize() == 2, "both claims wait for the next batch")
            a.commit()
            wait_until(lambda: blocked_by(postgres_db, b_pid) > 0, "the second batch's statement waits for its row")
            # The gate deferred the hole's message (its one attempt at a time is taken): its thread records the
            # deferral while the batch's statement still waits, instead of being held by it.
            wait_until(lambda: deferral_reason(postgres_db, deferred) == "limit", "the deferral is recorded meanwhile")
            b.commit()
        done = [wait_for_status(postgres_db, job_id) for job_id in (first, held)]

    assert {job.status for job in done} == {Status.SUCCESS}



def reset_while_its_record_waits(postgres_db, redis_server_url, queue_name, job_id, key: str) -> None:
    """Send `job_id`'s message to a destination that defers it, and have an operator reset the destination after
    the gate's answer and before the ledger's record of it commits (held back by a lock on the job's row)."""
    with postgres_db.engine.connect() as holder, holder.begin():
        holder_pid = lock_row(holder, job_id)
        seq = postgres_db.run(lambda conn: queries.dispatch_state(conn, job_id)).dispatch_seq
        now = utcnow()
        Dispatcher(make_broker(redis_server_url), queue_name).send([Dispatch(job_id, seq, now, key)], now=now)
        wait_until(lambda: blocked_by(postgres_db, holder_pid) > 0, "the deferral's record waits for the row")
        reset_by_command(postgres_db, redis_server_url, queue_name, key)


@pytest.mark.parametrize(
    ("cooldown", "path"),
    [("30", "its delayed message comes back at the cooldown's end"), ("60", "parked in the ledger, past the horizon")],
)
def test_a_reset_landing_between_the_gates_deferral_and_its_record_still_sends_the_job_at_once(
    postgres_db, redis_server_url, queue_name, tmp_path, cooldown, path
):
    build = settings_builder(postgres_db, redis_server_url, queue_name, tmp_path)
    with tripped_circuit(build, postgres_db, redis_server_url, queue_name, cooldown=cooldown) as tripped:
        # Far enough into the cooldown that a 30 s one defers into the delay queue (within the schedule horizon).
        wait_until(lambda: time.time() > tripped.opened_until - float(cooldown) + 1.5, "a second into the cooldown")
        late = submit(postgres_db, None, build(), channel="webhook", recipient=tripped.sink.url,
                      destination=tripped.key)  # fmt: skip
        reset_while_its_record_waits(postgres_db, redis_server_url, queue_name, late, tripped.key)
        done = wait_for_status(postgres_db, late, timeout=max(0.0, tripped.opened_until - time.time()))

    assert (done.status, done.attempts) == (Status.SUCCESS, 1), f"sent once the circuit was reset ({path})"


def test_a_reset_landing_between_a_pauses_deferral_and_its_record_still_sends_the_job_at_once(
    postgres_db, redis_server_url, queue_name, tmp_path
):
    settings = settings_builder(postgres_db, redis_server_url, queue_name, tmp_path)(WJP_WEBHOOK_ALLOW_PRIVATE="true")
    dispatcher = Dispatcher(make_broker(redis_server_url), queue_name)
    channels = {"webhook": WebhookChannel(settings.channels)}
    with webhook_sink([Reply(429, {"Retry-After": "60"}), Reply(200)]) as sink, running_worker(
        settings, postgres_db, channels=channels
    ), gate_of(redis_server_url, queue_name) as (gate, used):
        port = sink.server.server_address[1]
        key = f"webhook:127.0.0.1:{port}"
        used.append(key)
        webhook_job(postgres_db, dispatcher, settings, port)
        wait_until(lambda: gate.inspect([key])[0].paused_until is not None, "the 429 paused the destination")
        paused_until = gate.inspect([key])[0].paused_until.timestamp()
        late = submit(postgres_db, None, settings, channel="webhook", recipient=sink.url, destination=key)
        reset_while_its_record_waits(postgres_db, redis_server_url, queue_name, late, key)
        done = wait_for_status(postgres_db, late, timeout=max(0.0, paused_until - time.time()))

    assert (done.status, done.attempts) == (Status.SUCCESS, 1), "sent once the pause was lifted"


def test_only_a_circuit_or_pause_that_was_to_last_beyond_now_is_checked_for_a_reset():
    now = utcnow()
    later, ended = now + timedelta(seconds=30), now - timedelta(milliseconds=50)
    job = uuid.uuid4

    def deferred(reason: str, until) -> Deferred:  # type: ignore[no-untyped-def]
        return Deferred(job(), 1, reason, "webhook:example.com", until)

    resettable = [deferred("circuit", later), deferred("throttled", later)]
    left_to_their_message = [
        deferred("throttled", ended),  # the pause ended by itself: its jobs come back spread over a second
        deferred("circuit", ended),
        deferred("throttled", None),
        deferred("limit", later),  # a reset lifts no limit
    ]

    assert awaiting_lift([*resettable, *left_to_their_message], now) == resettable
