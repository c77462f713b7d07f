"""The commands that enqueue messages as Dramatiq's enqueue script would, for the broker's sync and async sends."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import redis
from dramatiq.common import dq_name

from actors.consumer import BELL_TOKENS, bell_key


def enqueue_commands(namespace: str, messages: Sequence[tuple[str, str, bytes]]) -> list[tuple[object, ...]]:
    """The commands, for a MULTI, that enqueue each `(queue, Redis message id, encoded message)` as Dramatiq's
    enqueue script would: per queue, the bodies into its hash and then the ids onto its list; for a queue that is
    not a delay queue, a token on its bell too, which wakes an idle consumer (`BelledConsumer`).

    Atomic in the MULTI, as the script is: a body without its id on the list would look queued to
    `Dispatcher.missing` and never be delivered; an id without its body would be dropped by the consumer. What the
    script does besides (a heartbeat under the sender's id, and maintenance by chance) concerns consumers, not
    senders."""
    by_queue: dict[str, dict[str, bytes]] = {}
    for queue_name, rid, data in messages:
        by_queue.setdefault(queue_name, {})[rid] = data
    commands: list[tuple[object, ...]] = []
    for queue_name, bodies in by_queue.items():
        key = f"{namespace}:{queue_name}"
        commands.append(("HSET", f"{key}.msgs", *itertools.chain.from_iterable(bodies.items())))
        commands.append(("RPUSH", key, *bodies))
        if dq_name(queue_name) != queue_name:
            commands.append(("RPUSH", bell_key(queue_name), 1))
            commands.append(("LTRIM", bell_key(queue_name), -BELL_TOKENS, -1))
    return commands


def raise_failed(executed: object) -> None:
    """Raise the first error of a MULTI's EXEC reply, or that it was aborted."""
    if executed is None:
        raise redis.ResponseError("the transaction was aborted")
    assert isinstance(executed, list)
    for reply in executed:
        if isinstance(reply, Exception):
            raise reply
