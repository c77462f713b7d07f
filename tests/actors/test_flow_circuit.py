"""The circuit breaker of a destination against a real receiver that fails then recovers, through a real worker on
the real PostgreSQL and Redis: it opens after exactly WJP_BREAKER_THRESHOLD transient failures, sends nothing and
spends no attempt while open, sends one probe per cooldown (doubled when the probe fails), closes on the probe's
success; `wjp destinations reset`, run as an operator runs it, closes it at once."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from actors.broker import Dispatcher, make_broker
from actors.channels.webhook import WebhookChannel
from actors.flow import Gate
from actors.flow.terms import DestinationState
from ledger.states import Status
from tests.actors.conftest import running_worker, settings_builder, submit, wait_for_status
from tests.conftest import settings_env
from tests.e2e.conftest import process_env, run_wjp
from tests.flow_checks import assert_stats_equal_ledger, gate_of, rows_of
from tests.webhook_sink import Reply, WebhookSink, webhook_sink

#: Redis's clock and this process's wall clock are the same host's: the gate's times compare with ours.
CLOCK_SLACK = 0.005


@dataclass(frozen=True)
class Seen:
    at: float
    state: DestinationState


class CircuitWatch:
    """Polls the gate's state of one destination, remembering each change with the wall time it was first seen."""

    def __init__(self, gate: Gate, key: str) -> None:
        self.gate, self.key = gate, key
        self.seen: list[Seen] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            state = self.gate.inspect([self.key])[0]
            last = self.seen[-1].state if self.seen else None
            if last is None or (state.circuit, state.opened_until, state.consecutive_failures) != (
                last.circuit, last.opened_until, last.consecutive_failures
            ):  # fmt: skip
                self.seen.append(Seen(time.time(), state))
            self._stop.wait(0.01)

    def openings(self) -> list[Seen]:
        """Each time the circuit was seen open until a new time, first sighting of each."""
        found: list[Seen] = []
        for seen in self.seen:
            if seen.state.circuit == "open" and (not found or found[-1].state.opened_until != seen.state.opened_until):
                found.append(seen)
        return found

    def wait_open(self, times: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.openings()) < times:
            assert time.monotonic() < deadline, f"the circuit did not open {times} time(s): {self.seen}"
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def watching(gate: Gate, key: str) -> Iterator[CircuitWatch]:
    watch = CircuitWatch(gate, key)
    watch._thread.start()
    try:
        yield watch
    finally:
        watch.stop()


def wall_times(sink: WebhookSink) -> list[float]:
    """When each request reached the receiver, on the wall clock, which Redis's stamps are read from (taken as each
    request arrived: converting the monotonic times afterwards breaks when the clock is stepped meanwhile)."""
    return [received.wall for received in sink.requests()]


@pytest.fixture
def build(postgres_db, redis_server_url, queue_name, tmp_path):
    return settings_builder(postgres_db, redis_server_url, queue_name, tmp_path)


def test_a_failing_receiver_opens_its_circuit_after_the_threshold_gets_one_probe_per_doubled_cooldown_then_flows(
    build, postgres_db, redis_server_url, queue_name
):
    settings = build(
        WJP_BREAKER_THRESHOLD="3", WJP_BREAKER_COOLDOWN="1", WJP_MAX_ATTEMPTS="10", WJP_WEBHOOK_TIMEOUT="1",
        WJP_VISIBILITY_TIMEOUT="3",
    )  # fmt: skip
    dispatcher = Dispatcher(make_broker(redis_server_url), queue_name)
    # Three failures open it; the first probe fails (reopening it), the second succeeds; both take 0.3 s to answer.
    script = [Reply(503), Reply(503), Reply(503), Reply(503, delay=0.3), Reply(200, delay=0.3), Reply(200)]
    with webhook_sink(script) as sink, gate_of(redis_server_url, queue_name) as (gate, used):
        key = f"webhook:127.0.0.1:{sink.server.server_address[1]}"
        used.append(key)

        def job() -> uuid.UUID:
            return submit(postgres_db, dispatcher, settings, channel="webhook", recipient=sink.url, destination=key)

        # 8 threads: the process's share of one destination (4) holds every job of the test, so none is parked
        # for the share's 'limit' on the way to the gate.
        channels = {"webhook": WebhookChannel(settings.channels)}
        with running_worker(settings, postgres_db, channels=channels, threads=8), watching(gate, key) as watch:
            first = job()
            watch.wait_open(1)
            later = [job() for _ in range(3)]
            deferred: set[uuid.UUID] = set()
            while deferred != set(later) and len(watch.openings()) < 2:
                rows = rows_of(postgres_db, later).values()
                deferred |= {row.id for row in rows if (row.deferred_reason, row.attempts) == ("circuit", 0)}
                time.sleep(0.01)
            done = [wait_for_status(postgres_db, job_id, timeout=30) for job_id in [first, *later]]
            final = gate.inspect([key])[0]
        arrivals = wall_times(sink)
        openings = watch.openings()

    assert deferred == set(later), "every job sent while the circuit was open was deferred for it, no attempt spent"
    assert [seen.state.consecutive_failures for seen in openings] == [3, 4]
    opened, reopened = openings
    cooldown_end, reopened_end = opened.state.opened_until.timestamp(), reopened.state.opened_until.timestamp()
    # Opened by the third failure's answer, for one cooldown; nothing sent until it ended, then exactly one probe.
    assert arrivals[2] + 1.0 - CLOCK_SLACK <= cooldown_end <= opened.at + 1.0
    assert arrivals[3] >= cooldown_end - CLOCK_SLACK
    # The probe failed after holding 0.3 s: reopened for twice the cooldown, and again one probe after it.
    assert arrivals[3] + 0.3 + 2.0 - CLOCK_SLACK <= reopened_end <= reopened.at + 2.0
    assert arrivals[4] >= reopened_end - CLOCK_SLACK
    # The probe's success (after its 0.3 s) closed the circuit, and then the deferred jobs flowed.
    assert all(at >= arrivals[4] + 0.3 for at in arrivals[5:])
    assert (final.circuit, final.consecutive_failures) == ("closed", 0)
    assert {job.status for job in done} == {Status.SUCCESS}
    assert len(arrivals) == 8, "4 failures (3 + the failed probe) and one success per job"
    assert sum(job.attempts for job in done) == len(arrivals), "an attempt only for a request sent"
    assert_stats_equal_ledger(postgres_db)


@dataclass(frozen=True)
class Tripped:
    """A destination whose circuit a worker opened: `first` failed 3 times, then its retry and `waiting` were
    deferred for the circuit, `job` sends one more; the cooldown ends at `opened_until` (wall clock)."""

    gate: Gate
    key: str
    job: Callable[[], uuid.UUID]
    first: uuid.UUID
    waiting: list[uuid.UUID]
    opened_until: float
    sink: WebhookSink


@contextmanager
def tripped_circuit(build, postgres_db, redis_server_url, queue_name, cooldown: str) -> Iterator[Tripped]:
    """A worker delivering to a receiver that failed 3 times (opening the circuit for `cooldown` seconds) and
    answers 200 from then on."""
    settings = build(WJP_BREAKER_THRESHOLD="3", WJP_BREAKER_COOLDOWN=cooldown, WJP_MAX_ATTEMPTS="10")
    dispatcher = Dispatcher(make_broker(redis_server_url), queue_name)
    with webhook_sink([Reply(503), Reply(503), Reply(503), Reply(200)]) as sink, gate_of(
        redis_server_url, queue_name
    ) as (gate, used):
        key = f"webhook:127.0.0.1:{sink.server.server_address[1]}"
        used.append(key)

        def job() -> uuid.UUID:
            return submit(postgres_db, dispatcher, settings, channel="webhook", recipient=sink.url, destination=key)

        channels = {"webhook": WebhookChannel(settings.channels)}
        with running_worker(settings, postgres_db, channels=channels, threads=8), watching(gate, key) as watch:
            first = job()
            watch.wait_open(1)
            opened_until = watch.openings()[0].state.opened_until.timestamp()
            waiting = [job() for _ in range(2)]
            # `first`'s retry too (back ~0.8 s after its third failure): else the reset, a process slow to start,
            # lands before, during or after its deferral as the machine's load has it; each is tested on its own.
            while {row.deferred_reason for row in rows_of(postgres_db, [first, *waiting]).values()} != {"circuit"}:
                assert time.time() < opened_until, "the jobs sent while the circuit was open were deferred for it"
                time.sleep(0.01)
            yield Tripped(gate, key, job, first, waiting, opened_until, sink)


#: The cooldown of the circuits an operator resets: the reset is a `wjp` process, whose start alone takes seconds on
#: a loaded machine, and only a reset well inside the cooldown tells its effect from the cooldown's end.
RESET_COOLDOWN = "30"


def reset_by_command(postgres_db, redis_server_url, queue_name, key: str) -> None:
    env = process_env(**settings_env(postgres_db, redis_server_url, queue_name))
    reset = run_wjp(["destinations", "reset", key], env)
    assert reset.returncode == 0, reset.stderr


def test_wjp_destinations_reset_closes_an_open_circuit_at_once_and_the_destinations_jobs_flow(
    build, postgres_db, redis_server_url, queue_name
):
    with tripped_circuit(build, postgres_db, redis_server_url, queue_name, cooldown=RESET_COOLDOWN) as tripped:
        reset_by_command(postgres_db, redis_server_url, queue_name, tripped.key)
        after_reset = tripped.gate.inspect([tripped.key])[0]
        fresh = wait_for_status(postgres_db, tripped.job(), timeout=20)
        delivered_at = time.time()
        done = [wait_for_status(postgres_db, job_id, timeout=20) for job_id in [tripped.first, *tripped.waiting]]
        sent = tripped.sink.count()

    assert (after_reset.circuit, after_reset.consecutive_failures) == ("closed", 0)
    assert (fresh.status, fresh.attempts) == (Status.SUCCESS, 1)
    assert delivered_at < tripped.opened_until, "a job after the reset flowed before the circuit would have closed"
    assert {job.status for job in done} == {Status.SUCCESS}
    assert [job.attempts for job in done] == [4, 1, 1], "no attempt spent on the deferrals"
    assert sent == 3 + 1 + 3
    assert_stats_equal_ledger(postgres_db)


def test_the_jobs_deferred_while_a_circuit_was_open_flow_once_an_operator_resets_it(
    build, postgres_db, redis_server_url, queue_name
):
    with tripped_circuit(build, postgres_db, redis_server_url, queue_name, cooldown=RESET_COOLDOWN) as tripped:
        reset_by_command(postgres_db, redis_server_url, queue_name, tripped.key)
        done = [wait_for_status(postgres_db, job_id, timeout=max(0.0, tripped.opened_until - time.time()))
                for job_id in tripped.waiting]  # fmt: skip

    assert {job.status for job in done} == {Status.SUCCESS}
