"""Limits of a destination through a running worker on the real PostgreSQL and Redis, against real receivers: jobs
waiting on a black-holed destination past WJP_MAX_DEFERRAL are failed by the reconciler's passes (not the job that
holds the slot), and an operator's override, set with `wjp destinations set`, reaches a running worker within 5 s."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from actors.broker import Dispatcher, make_broker
from actors.channels.webhook import WebhookChannel
from ledger.states import Status
from tests.actors.conftest import make_reconciler, running_worker, settings_builder, submit, wait_for_status
from tests.actors.test_destinations import black_hole
from tests.conftest import settings_env
from tests.e2e.conftest import process_env, run_wjp
from tests.flow_checks import assert_stats_equal_ledger, gate_of, rows_of
from tests.holding_receiver import holding_receiver

#: The spec's bound for an override to reach every worker.
OVERRIDE_REACHES_WORKERS = 5.0


@pytest.fixture
def build(postgres_db, redis_server_url, queue_name, tmp_path):
    return settings_builder(postgres_db, redis_server_url, queue_name, tmp_path)


def test_jobs_waiting_on_a_black_holed_destination_past_the_most_deferral_fail_naming_it_but_not_the_one_in_flight(
    build, postgres_db, redis_server_url, queue_name
):
    settings = build(
        WJP_DESTINATION_CONCURRENCY="1", WJP_MAX_DEFERRAL="2", WJP_WEBHOOK_TIMEOUT="20", WJP_VISIBILITY_TIMEOUT="30",
    )  # fmt: skip
    dispatcher = Dispatcher(make_broker(redis_server_url), queue_name)
    reconciler, stop = make_reconciler(settings, postgres_db, dispatcher), threading.Event()
    passes = threading.Thread(target=reconciler.run_forever, args=(0.3, stop, lambda report: None), daemon=True)
    worker = running_worker(settings, postgres_db, channels={"webhook": WebhookChannel(settings.channels)})
    # The black hole closes its connections first, so that the worker's stop does not wait out their timeouts.
    with worker, black_hole() as hole, gate_of(redis_server_url, queue_name) as (_, used):
        key = f"webhook:127.0.0.1:{hole.port}"
        used.append(key)

        def job() -> uuid.UUID:
            recipient = f"http://127.0.0.1:{hole.port}/hook"
            return submit(postgres_db, dispatcher, settings, channel="webhook", recipient=recipient, destination=key)

        holder = job()
        deadline = time.monotonic() + 20
        while hole.accepted < 1:
            assert time.monotonic() < deadline, "the first job never reached the black hole"
            time.sleep(0.01)
        waiting = [job() for _ in range(3)]
        passes.start()
        try:
            failed = [wait_for_status(postgres_db, job_id, {Status.FAILED}, timeout=20) for job_id in waiting]
            held = rows_of(postgres_db, [holder])[holder]
            sent = hole.accepted
        finally:
            stop.set()
            passes.join()
        assert_stats_equal_ledger(postgres_db)

    assert {job.last_error for job in failed} == {f"waited more than 2 s on destination {key}: at its limit"}
    assert {job.attempts for job in failed} == {0}
    assert (held.status, held.attempts) == ("PROCESSING", 1), "the attempt in flight ends at its own deadline"
    assert sent == 1


def test_a_concurrency_set_by_an_operator_reaches_a_running_worker_within_5_s(
    build, postgres_db, redis_server_url, queue_name
):
    settings = build()
    dispatcher = Dispatcher(make_broker(redis_server_url), queue_name)
    env = process_env(**settings_env(postgres_db, redis_server_url, queue_name))
    worker = running_worker(settings, postgres_db, channels={"webhook": WebhookChannel(settings.channels)}, threads=8)
    with holding_receiver([0.3]) as receiver, worker, gate_of(redis_server_url, queue_name) as (_, used):
        used.append(receiver.destination)

        def burst(n: int) -> list[uuid.UUID]:
            return [
                submit(postgres_db, dispatcher, settings, channel="webhook", recipient=receiver.url,
                       destination=receiver.destination)
                for _ in range(n)
            ]  # fmt: skip

        before = burst(6)
        deadline = time.monotonic() + 20
        while receiver.most_in_flight() < 2:
            assert time.monotonic() < deadline, "the default concurrency never let two requests in at once"
            time.sleep(0.01)
        changed = run_wjp(["destinations", "set", receiver.destination, "--concurrency", "1"], env)
        set_at = time.monotonic()
        done = [wait_for_status(postgres_db, job_id) for job_id in before]
        time.sleep(max(0.0, set_at + OVERRIDE_REACHES_WORKERS - time.monotonic()))
        after = burst(6)
        done += [wait_for_status(postgres_db, job_id) for job_id in after]
        assert_stats_equal_ledger(postgres_db)

    assert changed.returncode == 0, changed.stderr
    assert receiver.most_in_flight(since=set_at + OVERRIDE_REACHES_WORKERS) == 1
    assert len([held for held in receiver.requests() if held.at >= set_at + OVERRIDE_REACHES_WORKERS]) == 6
    assert {(job.status, job.attempts) for job in done} == {(Status.SUCCESS, 1)}
