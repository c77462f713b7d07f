"""The two intake baselines, served by gunicorn with the product's own gunicorn settings.

(a) `insert_app`: a bare Falcon app doing one SQLAlchemy INSERT per POST.
(b) `naive_app`:  the naive design, the same INSERT and then a Dramatiq `send()` of the new job's id.

Both are written the way the SQLAlchemy and Dramatiq tutorials write them: `with engine.begin()` (BEGIN,
INSERT, COMMIT), default connection pool, default Dramatiq `RedisBroker` and middleware. The table is a
naive notification table (uuid primary key, unique idempotency key), created by `bench/run.py`.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

import dramatiq
import falcon
import sqlalchemy as sa
from dramatiq.brokers.redis import RedisBroker

from bench.common import REFERENCE_GTHREADS

DATABASE_URL = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1)
REDIS_URL = os.environ["REDIS_URL"]

metadata = sa.MetaData()
baseline_jobs = sa.Table(
    "baseline_jobs",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("idempotency_key", sa.String(255), nullable=False, unique=True),
    sa.Column("recipient", sa.Text, nullable=False),
    sa.Column("channel", sa.String(32), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# gunicorn loads this module in each worker after the fork (preload_app is off), so each worker has its own.
# A connection per gunicorn thread (the reference rows run it on gthread), no overflow.
# SQLAlchemy's default of 5 would open and close a PostgreSQL connection for every request beyond the fifth at once.
engine = sa.create_engine(DATABASE_URL, pool_size=REFERENCE_GTHREADS, max_overflow=0)
INSERT = baseline_jobs.insert()

dramatiq.set_broker(RedisBroker(url=REDIS_URL))


@dramatiq.actor(queue_name="baseline")
def deliver(job_id: str) -> None:  # never run: the baseline measures the sender only
    pass


class Intake:
    def __init__(self, *, send: bool) -> None:
        self.send = send

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        doc = req.get_media()
        job_id = uuid.uuid4()
        with engine.begin() as conn:
            conn.execute(
                INSERT,
                {
                    "id": job_id,
                    "idempotency_key": doc["idempotency_key"],
                    "recipient": doc["recipient"],
                    "channel": doc["channel"],
                    "message": doc["message"],
                    "status": "PENDING",
                    "created_at": datetime.now(UTC),
                },
            )
        if self.send:
            deliver.send(str(job_id))
        resp.status = falcon.HTTP_202
        resp.media = {"job_id": str(job_id), "status": "PENDING"}


def _app(*, send: bool) -> falcon.App:
    app = falcon.App()
    app.add_route("/api/notifications", Intake(send=send))
    return app


insert_app = _app(send=False)
naive_app = _app(send=True)
