"""The two intake baselines on an event loop, for the API's asyncio server model (gunicorn `-k asgi` by default;
bench/intake.py chooses the worker class).

(a) `insert_app`: a bare `falcon.asgi` app doing one INSERT per POST through async psycopg.
(b) `naive_app`:  the same INSERT, then a Dramatiq `send()` of the new job's id.

Written as a developer new to both would write them from the libraries' docs: a `psycopg_pool.AsyncConnectionPool`
opened at start-up (ASGI lifespan), one connection per in-flight request (`async with pool.connection()`: BEGIN,
INSERT, COMMIT, the same statements as the threaded baseline's `engine.begin()`), at most POOL_SIZE per worker
process — as many as the threaded baseline's pool — so requests beyond that wait for a connection. Dramatiq has no
asynchronous `send()`, and its docs and the usual ASGI examples call it straight from the handler: it blocks the
loop for one Redis round trip (~0.1 ms on localhost), which costs less than handing each send to a thread
(`asyncio.to_thread`), so (b) is the faster of the two naive choices. Same table and Dramatiq actor as
bench/baseline_app.py.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

import dramatiq
import falcon
import falcon.asgi
from dramatiq.brokers.redis import RedisBroker
from psycopg_pool import AsyncConnectionPool

from service import gunicorn_conf

DATABASE_URL = os.environ["DATABASE_URL"]
REDIS_URL = os.environ["REDIS_URL"]
#: Connections per worker process: what the threaded baseline's pool holds (a connection per gunicorn thread).
POOL_SIZE = int(getattr(gunicorn_conf, "threads", 8))

INSERT = (
    "INSERT INTO baseline_jobs (id, idempotency_key, recipient, channel, message, status, created_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s)"
)

dramatiq.set_broker(RedisBroker(url=REDIS_URL))


@dramatiq.actor(queue_name="baseline")
def deliver(job_id: str) -> None:  # never run: the baseline measures the sender only
    pass


class Pool:
    """Opens the connection pool in the worker's event loop at start-up, closes it at shutdown."""

    def __init__(self) -> None:
        self.pool = AsyncConnectionPool(DATABASE_URL, min_size=POOL_SIZE, max_size=POOL_SIZE, open=False)

    async def process_startup(self, scope: dict, event: dict) -> None:
        await self.pool.open(wait=True)

    async def process_shutdown(self, scope: dict, event: dict) -> None:
        await self.pool.close()


class Intake:
    def __init__(self, pool: AsyncConnectionPool, *, send: bool) -> None:
        self.pool = pool
        self.send = send

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        doc = await req.get_media()
        job_id = uuid.uuid4()
        async with self.pool.connection() as conn:
            await conn.execute(
                INSERT,
                (job_id, doc["idempotency_key"], doc["recipient"], doc["channel"], doc["message"], "PENDING",
                 datetime.now(UTC)),
            )  # fmt: skip
        if self.send:
            deliver.send(str(job_id))  # blocks the loop for its Redis round trip (module docstring)
        resp.status = falcon.HTTP_202
        resp.media = {"job_id": str(job_id), "status": "PENDING"}


def _app(*, send: bool) -> falcon.asgi.App:
    pool = Pool()
    app = falcon.asgi.App(middleware=[pool])
    app.add_route("/api/notifications", Intake(pool.pool, send=send))
    return app


# Factories (gunicorn's `module:insert_app()`), so that each worker builds only the pool of the app it serves.
def insert_app() -> falcon.asgi.App:
    return _app(send=False)


def naive_app() -> falcon.asgi.App:
    return _app(send=True)
