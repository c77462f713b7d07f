"""Peer: a bare Dramatiq no-op actor on the Redis broker (default middleware, no retries).

worker: python -m dramatiq bench.peer_dramatiq --processes 2 --threads 8 --queues peer
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

dramatiq.set_broker(RedisBroker(url=os.environ["REDIS_URL"]))
QUEUE = "peer"


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop(i: int) -> None:
    pass
