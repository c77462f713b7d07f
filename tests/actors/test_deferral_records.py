"""Recording a deferral in the ledger, through a real Dramatiq worker and a black-holed receiver: the record is
written apart from the claims, so that a slow one never holds back another destination's jobs."""

from __future__ import annotations

from sqlalchemy import select, text

from actors.broker import Dispatcher, make_broker
from actors.channels.webhook import WebhookChannel
from ledger.schema import jobs
from ledger.states import Status
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch
from tests.actors.conftest import running_worker, settings_builder, submit, wait_for_status, wait_until
from tests.actors.test_destinations import black_hole, deferral_reason, webhook_job
from tests.webhook_sink import webhook_sink


def blocked_by(database, holder_pid: int) -> int:
    """Sessions waiting for a lock that backend `holder_pid` holds."""
    query = text("SELECT count(*) FROM pg_stat_activity WHERE :holder = ANY(pg_blocking_pids(pid))")
    return database.run(lambda conn: conn.execute(query, {"holder": holder_pid}).scalar_one())


def test_a_deferral_whose_record_waits_on_its_row_holds_back_no_other_destination(
    postgres_db, redis_server_url, queue_name, tmp_path
):
    settings = settings_builder(postgres_db, redis_server_url, queue_name, tmp_path)(
        WJP_WEBHOOK_ALLOW_PRIVATE="true", WJP_WEBHOOK_TIMEOUT="20", WJP_VISIBILITY_TIMEOUT="30"
    )
    dispatcher = Dispatcher(make_broker(redis_server_url), queue_name)
    channels = {"webhook": WebhookChannel(settings.channels)}
    worker = running_worker(settings, postgres_db, channels=channels, threads=4)
    with worker, webhook_sink() as healthy, black_hole() as hole:
        destination = f"webhook:127.0.0.1:{hole.port}"
        webhook_job(postgres_db, dispatcher, settings, hole.port)
        wait_until(lambda: hole.open == 1, "the hole holds its one attempt (never seen to answer: one at a time)")
        waiting = submit(
            postgres_db, None, settings, channel="webhook", recipient=f"http://127.0.0.1:{hole.port}/hook",
            destination=destination,
        )  # fmt: skip
        # Its row held by a transaction of ours, as a busy ledger might hold it: its deferral's record must wait.
        with postgres_db.engine.connect() as holder, holder.begin():
            seq = holder.execute(select(jobs.c.dispatch_seq).where(jobs.c.id == waiting).with_for_update()).scalar_one()
            holder_pid = holder.execute(text("SELECT pg_backend_pid()")).scalar_one()
            now = utcnow()
            dispatcher.send([Dispatch(waiting, seq, now, destination)], now=now)
            wait_until(lambda: blocked_by(postgres_db, holder_pid) > 0, "the deferral's record waits for the row")
            flowing = [webhook_job(postgres_db, dispatcher, settings, healthy.server.server_address[1])
                       for _ in range(3)]  # fmt: skip
            done = [wait_for_status(postgres_db, job_id) for job_id in flowing]
        wait_until(lambda: deferral_reason(postgres_db, waiting) == "limit", "the deferral is recorded once free")

    assert {job.status for job in done} == {Status.SUCCESS}, "the other destination's jobs are claimed meanwhile"
