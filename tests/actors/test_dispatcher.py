"""The dispatcher writes Dramatiq's messages itself, a batch per round trip: Dramatiq must read them as its own."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import dramatiq
import pytest
import redis

from actors.broker import (
    ACTOR_NAME,
    NAMESPACE,
    RID_OPTION,
    BrokerUnavailable,
    Dispatcher,
    bell_key,
    make_broker,
    redis_message_id,
)
from actors.consumer import MISSES_BEFORE_BELL
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch
from tests.conftest import free_port


def stored(client: redis.Redis, queue: str, rid: str) -> dramatiq.Message:
    return dramatiq.Message.decode(client.hget(f"{NAMESPACE}:{queue}.msgs", rid))


def test_a_batch_lands_where_dramatiqs_own_enqueue_puts_each_message(dispatcher, queue_name, redis_server_url):
    now = utcnow()
    due, later = Dispatch(uuid.uuid4(), 1, now), Dispatch(uuid.uuid4(), 3, now + timedelta(minutes=5))
    client = redis.Redis.from_url(redis_server_url)

    assert dispatcher.send([due, later], now=now) == 2

    # Due now: on the queue's list and in its hash; later: on the delay queue's, with its due time (eta).
    assert client.lrange(f"{NAMESPACE}:{queue_name}", 0, -1) == [redis_message_id(due).encode()]
    assert client.lrange(f"{NAMESPACE}:{queue_name}.DQ", 0, -1) == [redis_message_id(later).encode()]
    message = stored(client, queue_name, redis_message_id(due))
    assert (message.actor_name, message.args, message.message_id) == (ACTOR_NAME, (str(due.job_id),), f"{due.job_id}.1")
    assert message.options[RID_OPTION] == message.options["redis_message_id"] == f"{due.job_id}.1"
    delayed = stored(client, f"{queue_name}.DQ", redis_message_id(later))
    assert delayed.options["eta"] >= dramatiq.common.current_millis() + 4 * 60 * 1000
    other_dispatch = Dispatch(due.job_id, 2, now)
    assert dispatcher.missing([due, later, other_dispatch]) == [other_dispatch]
    # Dramatiq's consumer reads it as one of its own messages.
    consumer = dispatcher.broker.consume(queue_name, prefetch=5, timeout=100)
    assert next(consumer).options[RID_OPTION] == f"{due.job_id}.1"


def test_nothing_to_send_makes_no_round_trip(queue_name):
    unreachable = Dispatcher(make_broker(f"redis://127.0.0.1:{free_port()}/0"), queue_name)

    assert unreachable.send([], now=utcnow()) == 0


def test_a_send_rings_the_queues_bell_once_however_many_messages_it_holds(dispatcher, queue_name, redis_server_url):
    client = redis.Redis.from_url(redis_server_url)
    now = utcnow()

    dispatcher.send([Dispatch(uuid.uuid4(), 1, now) for _ in range(3)], now=now)
    dispatcher.send([Dispatch(uuid.uuid4(), 1, now)], now=now)
    # Delayed messages ring nothing: no consumer of the queue could take them yet.
    dispatcher.send([Dispatch(uuid.uuid4(), 1, now + timedelta(minutes=5))], now=now)

    # One token wakes one idle consumer, which then fetches all it may hold; more would only wake it for nothing.
    assert client.llen(bell_key(queue_name)) == 1
    assert client.llen(bell_key(f"{queue_name}.DQ")) == 0


def test_an_idle_consumer_waits_on_the_bell_and_a_send_wakes_it_long_before_its_back_off(dispatcher, queue_name):
    # Long idle (Dramatiq counts the empty fetches in `misses`), its back-off has grown to its limit, here ten
    # minutes: without the bell, the message sent below would wait that long to be fetched.
    consumer = dispatcher.broker.consume(queue_name, prefetch=4, timeout=600_000)
    consumer.misses = 20
    job_id = uuid.uuid4()
    fetched: list[object] = []
    waiting = threading.Thread(target=lambda: fetched.extend([next(consumer), next(consumer)]))
    waiting.start()

    waiting.join(timeout=1.0)
    assert waiting.is_alive()  # waiting on the bell
    dispatcher.send([Dispatch(job_id, 1, utcnow())], now=utcnow())
    waiting.join(timeout=30)

    assert not waiting.is_alive()
    woken, message = fetched
    assert woken is None  # the wait ends at the ring; the next call fetches
    assert message.options[RID_OPTION] == f"{job_id}.1"
    consumer.ack(message)
    consumer.close()


def test_a_consumer_whose_threads_are_all_busy_sleeps_its_first_pauses_and_only_then_waits_on_the_bell(
    dispatcher, queue_name, redis_server_url
):
    client = redis.Redis.from_url(redis_server_url)
    dispatcher.broker.worker_threads = 1
    consumer = dispatcher.broker.consume(queue_name, prefetch=4, timeout=50)
    dispatcher.send([Dispatch(uuid.uuid4(), 1, utcnow())], now=utcnow())
    held = next(consumer)  # in its one thread's hands: none is idle
    assert held is not None
    assert client.llen(bell_key(queue_name)) == 1  # the send's ring, which the fetch leaves

    for _ in range(MISSES_BEFORE_BELL):
        assert next(consumer) is None
        assert client.llen(bell_key(queue_name)) == 1  # slept, leaving the ring for an idle consumer
    assert next(consumer) is None
    assert client.llen(bell_key(queue_name)) == 0  # idle long enough: it waited on the bell, and took the ring
    consumer.ack(held)
    consumer.close()


def test_a_consumer_with_an_idle_thread_waits_on_the_bell_right_after_a_miss(dispatcher, queue_name, redis_server_url):
    client = redis.Redis.from_url(redis_server_url)
    dispatcher.broker.worker_threads = 2
    consumer = dispatcher.broker.consume(queue_name, prefetch=4, timeout=50)
    dispatcher.send([Dispatch(uuid.uuid4(), 1, utcnow())], now=utcnow())
    held = next(consumer)  # one thread busy, the other idle
    assert held is not None
    assert client.llen(bell_key(queue_name)) == 1  # the send's ring, which the fetch leaves

    assert next(consumer) is None  # its first miss, moments after a fetch
    assert client.llen(bell_key(queue_name)) == 0  # it waited on the bell (a sleep would have left the ring)
    consumer.ack(held)
    consumer.close()


def test_a_full_consumer_does_not_fetch_and_an_empty_fetch_does_not_ack_anything(dispatcher, queue_name):
    now = utcnow()
    first, second = Dispatch(uuid.uuid4(), 1, now), Dispatch(uuid.uuid4(), 1, now)
    dispatcher.send([first, second], now=now)
    consumer = dispatcher.broker.consume(queue_name, prefetch=1, timeout=50)

    held = next(consumer)
    # Holding its one message, the consumer leaves the other queued until it acks.
    assert next(consumer) is None
    assert dispatcher.missing([second]) == []
    consumer.ack(held)
    assert next(consumer).options[RID_OPTION] == redis_message_id(second)
    consumer.close()


def test_a_pooled_connection_redis_dropped_is_replaced_without_the_sender_noticing(
    dispatcher, queue_name, redis_server_url
):
    client = redis.Redis.from_url(redis_server_url)
    now = utcnow()
    dispatcher.send([Dispatch(uuid.uuid4(), 1, now)], now=now)  # the pool now holds a connection
    # What a Redis restart does to it; that connection only, since other tests (pytest-xdist) share this server.
    pool = dispatcher.broker.client.connection_pool
    pooled = pool.get_connection()
    pooled.send_command("CLIENT", "ID")
    pooled_id = pooled.read_response()
    pool.release(pooled)
    assert client.client_kill_filter(_id=pooled_id) == 1

    later = Dispatch(uuid.uuid4(), 1, now)
    assert dispatcher.send([later], now=now) == 1
    assert dispatcher.missing([later]) == []


def test_a_transaction_redis_refuses_raises_and_leaves_the_connection_fit_for_the_next(
    dispatcher, queue_name, redis_server_url
):
    client = redis.Redis.from_url(redis_server_url)
    now = utcnow()
    client.set(f"{NAMESPACE}:{queue_name}", "not a list")  # RPUSH fails inside EXEC

    with pytest.raises(BrokerUnavailable):
        dispatcher.send([Dispatch(uuid.uuid4(), 1, now)], now=now)

    client.delete(f"{NAMESPACE}:{queue_name}")
    sent = Dispatch(uuid.uuid4(), 1, now)
    assert dispatcher.send([sent], now=now) == 1
    assert client.lrange(f"{NAMESPACE}:{queue_name}", 0, -1) == [redis_message_id(sent).encode()]


def acked_in_redis(client: redis.Redis, queue_name: str, rid: str) -> bool:
    """Whether Dramatiq's ack of the message happened: its body is gone and no worker leases it any more."""
    leases = [key for key in client.scan_iter(f"{NAMESPACE}:__acks__.*.{queue_name}") if client.sismember(key, rid)]
    return not client.hexists(f"{NAMESPACE}:{queue_name}.msgs", rid) and not leases


def test_acks_go_to_redis_together_with_the_consumers_next_fetch_or_when_it_closes(
    dispatcher, queue_name, redis_server_url, monkeypatch
):
    client = redis.Redis.from_url(redis_server_url)
    now = utcnow()
    sent = [Dispatch(uuid.uuid4(), 1, now) for _ in range(3)]
    dispatcher.send(sent, now=now)
    consumer = dispatcher.broker.consume(queue_name, prefetch=3, timeout=50)
    messages = [next(consumer) for _ in sent]
    rids = [redis_message_id(dispatch) for dispatch in sent]

    for message in messages[:2]:
        consumer.ack(message)
    # Acked, the messages free the consumer's room at once, but stay leased in Redis until its next round trip.
    assert consumer.outstanding_message_count == 1
    assert not any(acked_in_redis(client, queue_name, rid) for rid in rids)

    exchanges = []
    exchange = dispatcher.broker._exchange
    monkeypatch.setattr(
        dispatcher.broker, "_exchange", lambda commands: exchanges.append(commands) or exchange(commands)
    )
    assert next(consumer) is None  # the cache is empty: the acks go out with the fetch, in one round trip
    assert [acked_in_redis(client, queue_name, rid) for rid in rids] == [True, True, False]
    assert [[command[4] for command in commands] for commands in exchanges] == [["ack", "ack", "fetch"]]

    consumer.ack(messages[2])
    consumer.close()  # a stopping worker closes its consumers after its threads are done
    assert acked_in_redis(client, queue_name, rids[2])


def test_acks_after_redis_lost_dramatiqs_script_load_it_again(dispatcher, queue_name, redis_server_url):
    client = redis.Redis.from_url(redis_server_url)
    now = utcnow()
    sent = Dispatch(uuid.uuid4(), 1, now)
    dispatcher.send([sent], now=now)
    consumer = dispatcher.broker.consume(queue_name, prefetch=1, timeout=50)
    consumer.ack(next(consumer))

    client.script_flush()  # what a restart of Redis does to its scripts
    assert next(consumer) is None
    assert acked_in_redis(client, queue_name, redis_message_id(sent))


def test_a_worker_tells_its_broker_how_many_threads_it_runs_so_its_consumers_know_when_one_is_idle(redis_server_url):
    broker = make_broker(redis_server_url)
    worker = dramatiq.Worker(broker, worker_threads=3, worker_timeout=50)
    worker.start()
    try:
        assert broker.worker_threads == 3
    finally:
        worker.stop()
        broker.close()
