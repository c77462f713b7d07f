"""A destination's fleet-wide concurrency across real `wjp worker` processes on PostgreSQL and Redis: two workers
share one limit, counted by the receiver, and the slots of a worker killed with `kill -9` come back to the fleet
once their leases expire, with no operator action."""

from __future__ import annotations

import time
import uuid

from ledger.states import Status
from tests.actors.conftest import submit, wait_for_status
from tests.e2e.conftest import Process, run_wjp
from tests.e2e.test_processes import ledger_env, wait_until
from tests.flow_checks import assert_stats_equal_ledger, gate_of, rows_of
from tests.holding_receiver import HoldingReceiver, holding_receiver

ATTEMPTS = type("S", (), {"max_attempts": 5})


def start_worker(env: dict[str, str], log, processes: list[Process], threads: int = 4) -> Process:
    worker = Process(["worker", "--processes", "1", "--threads", str(threads)], env, log)
    processes.append(worker)
    return worker


def webhook_jobs(database, dispatcher, receiver: HoldingReceiver, n: int) -> list[uuid.UUID]:
    return [
        submit(database, dispatcher, ATTEMPTS, channel="webhook", recipient=receiver.url,
               destination=receiver.destination)
        for _ in range(n)
    ]  # fmt: skip


def test_two_worker_processes_never_hold_more_than_their_destinations_concurrency_between_them(
    postgres_db, redis_server_url, queue_name, dispatcher, tmp_path, processes
):
    env = ledger_env(postgres_db, redis_server_url, queue_name, tmp_path)
    with holding_receiver([0.3]) as receiver, gate_of(redis_server_url, queue_name) as (_, used):
        used.append(receiver.destination)
        limited = run_wjp(["destinations", "set", receiver.destination, "--concurrency", "2"], env)
        assert limited.returncode == 0, limited.stderr
        workers = [start_worker(env, tmp_path / f"worker{n}.log", processes) for n in (1, 2)]
        for worker in workers:
            wait_until(lambda worker=worker: "Worker process is ready" in worker.output(), worker)

        jobs = webhook_jobs(postgres_db, dispatcher, receiver, 20)
        done = [wait_for_status(postgres_db, job_id, timeout=60) for job_id in jobs]
        stopped = [worker.terminate(timeout=30) for worker in workers]
        assert_stats_equal_ledger(postgres_db)

    assert stopped == [0, 0]
    assert receiver.most_in_flight() == 2, "the receiver never held more than the destination's concurrency"
    assert {(job.status, job.attempts) for job in done} == {(Status.SUCCESS, 1)}, "no attempt spent on a deferral"
    assert [receiver.count(job_id) for job_id in jobs] == [1] * 20, "none delivered twice"
    assert all(" success " in worker.output() for worker in workers), "both processes delivered"


def test_the_slots_of_a_worker_killed_with_kill_9_come_back_once_its_leases_expire(
    postgres_db, redis_server_url, queue_name, dispatcher, tmp_path, processes
):
    env = ledger_env(
        postgres_db, redis_server_url, queue_name, tmp_path,
        WJP_VISIBILITY_TIMEOUT="3", WJP_DESTINATION_CONCURRENCY="2", WJP_RECONCILE_INTERVAL="0.5",
        WJP_RECONCILE_GRACE="0.5",
    )  # fmt: skip
    # The first request is answered at once (the worker then knows the receiver as fast, not one to send one attempt
    # at a time), the next two are held far longer than the test (black-holed), every later one answered at once.
    with holding_receiver([0.0, 600.0, 600.0, 0.0]) as receiver, gate_of(redis_server_url, queue_name) as (gate, used):
        used.append(receiver.destination)
        doomed = start_worker(env, tmp_path / "doomed.log", processes)
        wait_for_status(postgres_db, webhook_jobs(postgres_db, dispatcher, receiver, 1)[0], timeout=30)
        jobs = webhook_jobs(postgres_db, dispatcher, receiver, 6)
        wait_until(lambda: receiver.count() >= 3, doomed)
        holders = {uuid.UUID(held.job) for held in receiver.requests()[1:]}
        waiters = [job_id for job_id in jobs if job_id not in holders]
        deadline = time.monotonic() + 30
        while {(row.deferred_reason, row.attempts) for row in rows_of(postgres_db, waiters).values()} != {("limit", 0)}:
            assert time.monotonic() < deadline, rows_of(postgres_db, waiters)
            time.sleep(0.02)
        held_before_kill = (receiver.count(), gate.inspect([receiver.destination])[0].in_flight)

        doomed.kill()
        # No operator action: a running reconciler and a new worker.
        processes.append(Process(["reconcile", "--loop"], env, tmp_path / "reconcile.log"))
        start_worker(env, tmp_path / "replacement.log", processes)
        done = {job_id: wait_for_status(postgres_db, job_id, timeout=60) for job_id in jobs}
        assert_stats_equal_ledger(postgres_db)

    assert held_before_kill == (3, 2), "the black hole held the destination's two slots, the rest deferred"
    assert {job.status for job in done.values()} == {Status.SUCCESS}
    assert {done[job_id].attempts for job_id in waiters} == {1}, "the waiting jobs spent no attempt waiting"
    assert {receiver.count(job_id) for job_id in waiters} == {1}
    # The killed worker's attempts were taken back after the visibility timeout and made again.
    assert {done[job_id].attempts for job_id in holders} == {2}
