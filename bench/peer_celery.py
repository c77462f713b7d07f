"""Peer: Celery 5 with the Redis broker and a no-op task, results ignored (no result backend).

worker: python -m celery -A bench.peer_celery worker --pool prefork --concurrency 2 -Q peer_celery
        --without-gossip --without-mingle --without-heartbeat
"""

from __future__ import annotations

import os

from celery import Celery

QUEUE = "peer_celery"
app = Celery("peer_celery", broker=os.environ["REDIS_URL"])
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False, task_default_queue=QUEUE)


@app.task
def noop(i: int) -> None:
    pass
