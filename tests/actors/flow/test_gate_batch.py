"""The gate's batched operation and waiting lists: many admits and releases of many destinations in one call, a
message parked for 'limit' leaves its worker's leases for the destination's waiting list, and releases (or the
reconciler's wake) put it back on the queue as far as there is room. On the real Redis and on fakeredis."""

from __future__ import annotations

import pytest
import redis

from actors.flow import Admission, AdmitRequest, BreakerPolicy, Gate, Limits, Outcome, QueueKeys, Reason, ReleaseRequest
from tests.actors.flow.steps import LEASE, at, deferred, granted

BREAKER = BreakerPolicy(threshold=2, cooldown=10, max_cooldown=25, forget_after=100)
ONE = Limits(concurrency=1, rate=None)
TWO = Limits(concurrency=2, rate=None)
UNLIMITED = Limits(concurrency=None, rate=None)
SLOW = "webhook:slow.example:443"
FAST = "webhook:fast.example:443"


@pytest.fixture
def queue(gate: Gate) -> QueueKeys:
    """A queue under the gate's prefix, deleted with it."""
    return QueueKeys("q", f"{gate.prefix}q", f"{gate.prefix}q.msgs", f"{gate.prefix}q.bell", f"{gate.prefix}acks")


def fetched(client: redis.Redis, queue: QueueKeys, *rids: str) -> None:
    """As Dramatiq's fetch leaves them: each body in the queue's hash, each id in this worker's acks set."""
    for rid in rids:
        client.hset(queue.bodies, rid, b"{}")
        client.sadd(queue.acks, rid)


def batch(gate: Gate, queue: QueueKeys, admits=(), releases=(), when: float = 0.0):
    return gate.batch(admits, releases, queue=queue, lease_seconds=LEASE, breaker=BREAKER, now=at(when))


def listed(client: redis.Redis, key: str) -> list[str]:
    return [item.decode() for item in client.lrange(key, 0, -1)]


def test_one_batch_decides_for_many_destinations_in_order_as_single_calls_would(gate, queue):
    admissions = batch(
        gate,
        queue,
        admits=[
            AdmitRequest(SLOW, "s1", ONE),
            AdmitRequest(FAST, "f1", TWO),
            AdmitRequest(SLOW, "s2", ONE),
            AdmitRequest(FAST, "f2", TWO),
            AdmitRequest(FAST, "f3", TWO),
        ],
    )

    assert admissions == [granted(), granted(), deferred("limit", LEASE), granted(), deferred("limit", LEASE)]
    assert [state.in_flight for state in gate.inspect([SLOW, FAST], now=at(0))] == [1, 2]


def test_the_releases_of_a_batch_free_their_slots_for_its_admits_and_move_the_breaker(gate, queue):
    batch(gate, queue, admits=[AdmitRequest(SLOW, "s1", ONE), AdmitRequest(FAST, "f1", ONE)])

    admissions = batch(
        gate,
        queue,
        admits=[AdmitRequest(SLOW, "s2", ONE)],
        releases=[
            ReleaseRequest(SLOW, "s1", Outcome.SUCCESS, ONE),
            ReleaseRequest(FAST, "f1", Outcome.THROTTLED, ONE, retry_after=5),
        ],
        when=1,
    )

    assert admissions == [granted()]
    slow, fast = gate.inspect([SLOW, FAST], now=at(1))
    assert (slow.in_flight, fast.in_flight, fast.paused_until) == (1, 0, at(6))


def test_a_message_at_its_destinations_limit_leaves_this_workers_leases_for_the_waiting_list(client, gate, queue):
    fetched(client, queue, "a.1", "b.1")
    (first,) = batch(gate, queue, admits=[AdmitRequest(SLOW, "a.1", ONE, park="a.1")])

    (second,) = batch(gate, queue, admits=[AdmitRequest(SLOW, "b.1", ONE, park="b.1")])

    assert first == granted()
    assert second == Admission(granted=False, reason=Reason.LIMIT, until=at(LEASE), parked=True)
    assert listed(client, gate.waiting_list(queue, SLOW)) == ["b.1"]
    assert client.smembers(queue.acks) == {b"a.1"}
    assert client.hexists(queue.bodies, "b.1"), "its body stays, where the reconciler finds it queued"
    assert gate.waiting(queue) == [SLOW]


def test_a_full_share_parks_the_message_without_taking_a_slot(client, gate, queue):
    fetched(client, queue, "a.1")

    (admission,) = batch(gate, queue, admits=[AdmitRequest(SLOW, "a.1", TWO, park="a.1", share_full=True)])

    assert (admission.granted, admission.reason, admission.parked) == (False, "limit", True)
    assert gate.inspect([SLOW], now=at(0))[0].in_flight == 0
    assert listed(client, gate.waiting_list(queue, SLOW)) == ["a.1"]


def test_a_message_no_longer_leased_to_this_worker_is_not_parked(client, gate, queue):
    batch(gate, queue, admits=[AdmitRequest(SLOW, "a.1", ONE)])
    client.hset(queue.bodies, "b.1", b"{}")  # requeued meanwhile: in no acks set of this worker

    (admission,) = batch(gate, queue, admits=[AdmitRequest(SLOW, "b.1", ONE, park="b.1")])

    assert (admission.reason, admission.parked) == ("limit", False)
    assert client.llen(gate.waiting_list(queue, SLOW)) == 0


def test_a_release_wakes_waiting_messages_onto_the_queue_with_a_bell_as_far_as_there_is_room(client, gate, queue):
    fetched(client, queue, "a.1", "b.1", "c.1", "d.1")
    batch(gate, queue, admits=[AdmitRequest(SLOW, "a.1", ONE, park="a.1")])
    batch(gate, queue, admits=[AdmitRequest(SLOW, rid, ONE, park=rid) for rid in ("b.1", "c.1", "d.1")])
    client.hdel(queue.bodies, "b.1")  # its job was dealt with meanwhile: nothing to wake

    batch(gate, queue, releases=[ReleaseRequest(SLOW, "a.1", Outcome.SUCCESS, ONE)], when=1)

    assert listed(client, queue.queue) == ["c.1"]
    assert listed(client, queue.bell) == ["1"]
    assert listed(client, gate.waiting_list(queue, SLOW)) == ["d.1"]


def test_a_release_wakes_no_more_than_its_own_slot_and_one_more_without_a_limit(client, gate, queue):
    rids = [f"{n}.1" for n in range(5)]
    fetched(client, queue, *rids)
    batch(gate, queue, admits=[AdmitRequest(SLOW, "held", UNLIMITED)])
    batch(gate, queue, admits=[AdmitRequest(SLOW, rid, UNLIMITED, park=rid, share_full=True) for rid in rids])

    batch(gate, queue, releases=[ReleaseRequest(SLOW, "held", Outcome.SUCCESS, UNLIMITED)], when=1)

    assert listed(client, queue.queue) == rids[:2]
    assert gate.waiting(queue) == [SLOW]


def test_the_reconcilers_wake_finds_the_room_that_expired_leases_left(client, gate, queue):
    fetched(client, queue, "w.1", "x.1", "y.1")
    batch(gate, queue, admits=[AdmitRequest(SLOW, "killed", TWO), AdmitRequest(SLOW, "alive", TWO, park="")], when=0)
    batch(gate, queue, admits=[AdmitRequest(SLOW, rid, TWO, park=rid) for rid in ("w.1", "x.1", "y.1")], when=0)

    assert gate.wake({SLOW: TWO}, queue=queue, now=at(1)) == {SLOW: 0}, "no room while both leases live"
    gate.release(SLOW, "alive", Outcome.NONE, breaker=BREAKER, now=at(LEASE - 1))
    client.delete(queue.queue)

    # The killed worker's lease expires; nobody releases it.
    assert gate.wake({SLOW: TWO}, queue=queue, now=at(LEASE + 1)) == {SLOW: 2}
    assert listed(client, queue.queue) == ["w.1", "x.1"]
    assert gate.wake({SLOW: UNLIMITED}, queue=queue, cap=5, now=at(LEASE + 1)) == {SLOW: 1}
    assert gate.waiting(queue) == []


def throttle(gate: Gate, queue: QueueKeys, *, for_seconds: float, when: float) -> None:
    batch(gate, queue, admits=[AdmitRequest(FAST, f"t{when}", UNLIMITED)], when=when)
    release = ReleaseRequest(FAST, f"t{when}", Outcome.THROTTLED, UNLIMITED, retry_after=for_seconds)
    batch(gate, queue, releases=[release], when=when)


def test_a_paused_destination_sends_one_message_back_for_the_end_of_its_pause_and_parks_the_others(
    client, gate, queue
):
    throttle(gate, queue, for_seconds=5, when=0)
    rids = [f"{n}.1" for n in range(4)]
    fetched(client, queue, *rids)

    admissions = batch(gate, queue, admits=[AdmitRequest(FAST, rid, UNLIMITED, park=rid) for rid in rids], when=1)

    waker, *others = admissions
    assert waker == Admission(granted=False, reason=Reason.THROTTLED, until=at(5), parked=False)
    assert {(a.reason, a.until, a.parked) for a in others} == {(Reason.THROTTLED, at(5), True)}
    assert listed(client, gate.waiting_list(queue, FAST)) == rids[1:]
    # The waker's attempt, once the pause has ended, wakes the waiting ones as its release frees its slot.
    (again,) = batch(gate, queue, admits=[AdmitRequest(FAST, "0.1", UNLIMITED)], when=6)
    assert again == granted()
    batch(gate, queue, releases=[ReleaseRequest(FAST, "0.1", Outcome.SUCCESS, UNLIMITED)], when=6)
    assert listed(client, queue.queue) == rids[1:3]


def test_a_new_pause_sends_a_new_message_back_for_its_own_end(client, gate, queue):
    fetched(client, queue, "a.1", "b.1", "c.1")
    throttle(gate, queue, for_seconds=5, when=0)
    (first,) = batch(gate, queue, admits=[AdmitRequest(FAST, "a.1", UNLIMITED, park="a.1")], when=1)
    (parked,) = batch(gate, queue, admits=[AdmitRequest(FAST, "b.1", UNLIMITED, park="b.1")], when=1)

    throttle(gate, queue, for_seconds=10, when=2)
    (second,) = batch(gate, queue, admits=[AdmitRequest(FAST, "c.1", UNLIMITED, park="c.1")], when=3)

    assert (first.parked, parked.parked) == (False, True)
    assert (second.until, second.parked) == (at(12), False), "the pause outlives the first waker: a second one"


def test_a_batch_on_a_redis_that_lost_its_scripts_sends_the_script_again(client, gate, queue):
    batch(gate, queue, admits=[AdmitRequest(SLOW, "s1", ONE)])
    client.script_flush()

    assert batch(gate, queue, admits=[AdmitRequest(SLOW, "s2", ONE)]) == [deferred("limit", LEASE)]
