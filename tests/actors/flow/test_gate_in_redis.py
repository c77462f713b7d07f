"""How the gate lives in Redis: destinations never touch each other, nothing idle stays, Redis's clock rules,
a lost script is sent again, and contending threads never exceed the limit."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import fakeredis
import pytest
import redis

from actors.flow import BreakerPolicy, Gate, Outcome, Reason
from tests.actors.flow.steps import (
    KEY,
    LEASE,
    OPENED,
    PROBING,
    Admit,
    Release,
    Reset,
    at,
    attempts,
    deferred,
    granted,
)

DISTURBANCES = {
    "at its limit": [Admit("a", concurrency=1)],
    "out of tokens": [Admit(f"r{n}", rate=2) for n in range(2)],
    "open": OPENED,
    "half-open": PROBING,
    "paused": [Admit("a"), Release("a", Outcome.THROTTLED, retry_after=600)],
}
NEIGHBOURS = [
    ("webhook:example.com:443", "webhook:example.com:4430"),
    ("email:smtp.example.com:587", "sms:api.twilio.com"),
    ("log", "log:leases"),
    ("webhook:[::1]:8080", "webhook:[::1]:8080:state"),
]


@pytest.mark.parametrize("disturbance", DISTURBANCES.values(), ids=DISTURBANCES.keys())
@pytest.mark.parametrize(("troubled", "healthy"), NEIGHBOURS)
def test_a_troubled_destination_never_touches_another(gate: Gate, disturbance, troubled: str, healthy: str) -> None:
    for step in disturbance:
        step.run(gate, troubled)
    before = gate.inspect([troubled], now=at(13))

    admission = gate.admit(healthy, "h", lease_seconds=LEASE, concurrency=1, rate=1, now=at(13))
    gate.release(healthy, "h", Outcome.TRANSIENT, breaker=BreakerPolicy(threshold=1), now=at(13))

    assert admission == granted()
    assert gate.inspect([troubled], now=at(13)) == before
    (other,) = gate.inspect([healthy], now=at(13))
    assert (other.in_flight, other.circuit, other.consecutive_failures) == (0, "open", 1)


def keys_and_ttls(client: redis.Redis, gate: Gate) -> dict[str, int]:
    return {key.decode(): client.pttl(key) for key in client.scan_iter(match=f"{gate.prefix}*")}


@pytest.mark.parametrize(
    "history",
    [
        [Admit("a"), Release("a", Outcome.SUCCESS, at=1)],
        [*attempts(Outcome.TRANSIENT, 2), Admit("s", at=3), Release("s", Outcome.SUCCESS, at=4)],
        [*OPENED, Reset(at=3)],
        [Admit("a", concurrency=1), Admit("b", concurrency=1), Release("a", Outcome.NONE, at=1)],
        [Admit("a"), Release("a", Outcome.PERMANENT, at=1)],
    ],
    ids=["success", "failures-then-success", "reset", "deferred-then-none", "permanent"],
)
def test_a_destination_back_to_its_defaults_leaves_no_key_behind(client: redis.Redis, gate: Gate, history) -> None:
    for step in history:
        step.run(gate)

    assert keys_and_ttls(client, gate) == {}
    assert gate.known(now=at(5)) == []


@pytest.mark.parametrize(
    ("history", "longest_ms"),
    [
        ([Admit("a")], 30_000),  # the lease
        ([Admit("a", rate=5), Release("a", Outcome.SUCCESS)], 200),  # until the bucket is full again
        ([Admit("a"), Release("a", Outcome.THROTTLED, retry_after=15)], 15_000),  # the pause
        (OPENED, 110_000),  # cooldown + forget_after
    ],
    ids=["lease", "tokens", "pause", "open-circuit"],
)
def test_state_that_is_not_default_expires_with_what_it_holds(client, gate: Gate, history, longest_ms: int) -> None:
    for step in history:
        step.run(gate)

    ttls = {key: ttl for key, ttl in keys_and_ttls(client, gate).items() if not key.endswith(":known")}
    assert ttls
    assert all(0 < ttl <= longest_ms for ttl in ttls.values()), ttls
    assert gate.known(now=at(0)) == [KEY]


def test_known_lists_the_destinations_that_hold_state_until_it_lapses(gate: Gate) -> None:
    for step in OPENED:
        step.run(gate, "sms:api.twilio.com")
    Admit("a").run(gate, "log")
    Admit("b").run(gate, "webhook:example.com:443")
    Release("b", Outcome.SUCCESS).run(gate, "webhook:example.com:443")

    assert gate.known(now=at(3)) == ["log", "sms:api.twilio.com"]
    assert gate.known(now=at(31)) == ["sms:api.twilio.com"]  # the lease of `log` has expired
    assert gate.known(now=at(113)) == []  # the breaker has forgotten


def test_without_now_the_gate_reads_the_redis_servers_clock(client: redis.Redis, gate: Gate) -> None:
    seconds, micros = client.time()
    before = datetime.fromtimestamp(seconds + micros // 1000 / 1000, UTC)  # the gate counts in milliseconds

    gate.admit(KEY, "a", lease_seconds=LEASE, concurrency=1, rate=None)
    gate.release(KEY, "a", Outcome.TRANSIENT, breaker=BreakerPolicy(threshold=1, cooldown=60))
    (state,) = gate.inspect([KEY])

    assert state.circuit == "open"
    assert before + timedelta(seconds=60) <= state.opened_until <= before + timedelta(seconds=120)
    assert gate.admit(KEY, "b", lease_seconds=LEASE, concurrency=1, rate=None).reason == Reason.CIRCUIT


def test_a_redis_that_lost_its_scripts_is_sent_the_script_again(client: redis.Redis, gate: Gate) -> None:
    gate.admit(KEY, "a", lease_seconds=LEASE, concurrency=1, rate=None, now=at(0))
    client.script_flush()

    assert gate.admit(KEY, "b", lease_seconds=LEASE, concurrency=1, rate=None, now=at(0)) == deferred("limit", 30)


@pytest.mark.parametrize(
    "build",
    [
        lambda: BreakerPolicy(threshold=0),
        lambda: BreakerPolicy(cooldown=0),
        lambda: BreakerPolicy(cooldown=60, max_cooldown=30),
        lambda: Gate(fakeredis.FakeRedis()).admit(KEY, "a", lease_seconds=30, concurrency=0, rate=None),
        lambda: Gate(fakeredis.FakeRedis()).admit(KEY, "a", lease_seconds=30, concurrency=1, rate=0),
        lambda: Gate(fakeredis.FakeRedis()).admit(KEY, "a", lease_seconds=0, concurrency=1, rate=None),
        lambda: Gate(fakeredis.FakeRedis()).admit("", "a", lease_seconds=30, concurrency=1, rate=None),
        lambda: Gate(fakeredis.FakeRedis()).reset(KEY, now=datetime(2030, 1, 1)),
    ],
)
def test_nonsense_limits_and_policies_are_refused(build) -> None:
    with pytest.raises(ValueError):
        build()


def test_threads_admitting_at_once_on_real_redis_never_hold_more_than_the_concurrency(redis_server_url: str) -> None:
    client = redis.Redis.from_url(redis_server_url)
    gate = Gate(client, prefix=f"wjp:test-flow-{uuid.uuid4().hex[:10]}:")
    threads, concurrency, rounds = 16, 5, 20
    start = threading.Barrier(threads, timeout=60)
    granted_per_round = [[] for _ in range(rounds)]

    def contend(thread: int) -> None:
        for round_ in range(rounds):
            start.wait()
            lease = f"{round_}-{thread}"
            if gate.admit(KEY, lease, lease_seconds=60, concurrency=concurrency, rate=None).granted:
                granted_per_round[round_].append(lease)
            start.wait()  # everyone has asked before anyone gives a slot back
            if lease in granted_per_round[round_]:
                gate.release(KEY, lease, Outcome.SUCCESS, breaker=BreakerPolicy())

    try:
        workers = [threading.Thread(target=contend, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert [len(granted) for granted in granted_per_round] == [concurrency] * rounds
        assert gate.inspect([KEY])[0].in_flight == 0
    finally:
        keys = list(client.scan_iter(match=f"{gate.prefix}*"))
        if keys:
            client.delete(*keys)
