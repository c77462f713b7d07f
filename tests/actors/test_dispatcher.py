"""The dispatcher writes Dramatiq's messages itself, a batch per round trip: Dramatiq must read them as its own."""

from __future__ import annotations

import uuid
from datetime import timedelta

import dramatiq
import redis

from actors.broker import ACTOR_NAME, NAMESPACE, RID_OPTION, Dispatcher, make_broker, redis_message_id
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
