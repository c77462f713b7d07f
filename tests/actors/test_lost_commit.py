"""A worker whose claim committed but whose answer the network lost (`tests/pg_proxy.py`) still delivers the job,
once, on the attempt it claimed: `Database.run` retries the claim, which recognises its own rows."""

from __future__ import annotations

from actors.delivery import Delivery
from actors.settings import Settings
from ledger import queries
from ledger.database import Database
from ledger.states import Status
from tests.actors.conftest import RecordingChannel, submit
from tests.conftest import settings_env
from tests.pg_proxy import LosingProxy


def test_a_claim_whose_answer_was_lost_is_delivered_once_on_the_attempt_it_claimed(
    postgres_db, postgres_server_url, dispatcher, redis_server_url, queue_name
):
    settings = Settings.from_env(settings_env(postgres_db, redis_server_url, queue_name))
    warm, job_id = submit(postgres_db, None, settings), submit(postgres_db, None, settings)
    channel = RecordingChannel()
    with LosingProxy(postgres_server_url) as proxy:
        lossy = Database(proxy.url)
        delivery = Delivery(database=lossy, dispatcher=dispatcher, channels={"log": channel}, settings=settings)
        # The worker's ledger thread makes its connection (and prepares its statements) before the fault.
        delivery(str(warm), f"{warm}.1")
        assert delivery.flush(10)

        proxy.arm()
        delivery(str(job_id), f"{job_id}.1")
        assert delivery.flush(10)
        lossy.dispose()

    assert proxy.lost.is_set()
    job = postgres_db.run(lambda conn: queries.get_job(conn, job_id, scope=None))
    assert (job.status, job.attempts) == (Status.SUCCESS, 1)
    assert channel.deliveries.count((job_id, 1)) == 1
    attempts = postgres_db.run(lambda conn: queries.list_attempts(conn, job_id))
    assert [(a.number, a.outcome) for a in attempts] == [(1, "success")]
