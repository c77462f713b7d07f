"""Two of a chaos run's checks, on what it recorded: that FLUSHALL's deletions were repaired by the reconciler, and
that the producers got an HTTP answer to every request, a 5xx only where a fault allows one."""

from __future__ import annotations

import json

from sqlalchemy import select

from ledger.database import Database
from ledger.schema import jobs
from ledger.states import Status
from tests.chaos.producers import Tally
from tests.chaos.report import Flush, Report


def check_flush(report: Report, flush: Flush, ledger: Database, reconciler_log: str, statuses: dict[str, str]) -> None:
    """FLUSHALL deleted messages of waiting jobs, the reconciler sent new dispatches after it, among them some of
    those jobs', and every one of those jobs was delivered: the repair happened, not merely nothing went wrong.

    Not every such job needs one: a worker may hold its message in memory already (Dramatiq prefetches), and a
    flaky job's retry makes a new dispatch of its own."""
    rows = ledger.run(lambda conn: conn.execute(select(jobs.c.id, jobs.c.dispatch_seq)).all())
    dispatch_seq = {row.id: row.dispatch_seq for row in rows}
    redispatched = {(job_id, seq) for job_id, seq in flush.waiting if dispatch_seq.get(job_id, 0) > seq}
    report.flushed_messages = len(flush.deleted)
    report.flushed_waiting_jobs = len(flush.waiting)
    report.flushed_jobs_redispatched = len(redispatched)
    report.reconciler_redispatched_after_flush = sum(
        json.loads(line).get("redispatched", 0)
        for line in reconciler_log[flush.reconciler_log_offset :].splitlines()
        if line.startswith("{")
    )
    if not flush.waiting:
        report.failures.append(
            f"FLUSHALL deleted {len(flush.deleted)} messages, none of a waiting job: it tested no repair"
        )
    elif not redispatched or not report.reconciler_redispatched_after_flush:
        report.failures.append(
            f"of {len(flush.waiting)} waiting jobs whose message FLUSHALL deleted, {len(redispatched)} got a new "
            f"dispatch; the reconciler reported {report.reconciler_redispatched_after_flush} re-dispatches after it"
        )
    undelivered = [str(job_id) for job_id, _ in flush.waiting if statuses.get(str(job_id)) != Status.SUCCESS.value]
    if undelivered:
        report.failures.append(f"{len(undelivered)} jobs whose message FLUSHALL deleted never succeeded")


def check_answers(report: Report, tally: Tally, pg_down: list[tuple[float, float]], *, started: float) -> None:
    """A 5xx is a 503 during the PostgreSQL restart, nothing else. The API itself is never stopped, and answers
    503 while PostgreSQL is away and 202 while Redis is (it records the job; the reconciler sends it), so any
    request without an HTTP answer (refused, reset, timed out) is a failure, in a fault's window or out of it."""
    report.status_codes = tally.histogram()
    unexpected = []
    for answer in tally.answers:
        if answer.status >= 500:
            during_outage = any(answer.started <= up and answer.ended >= down for down, up in pg_down)
            if answer.status != 503 or not during_outage:
                unexpected.append(answer)
    report.unexpected_5xx = len(unexpected)
    if unexpected:
        report.failures.append(
            f"{len(unexpected)} unexpected 5xx answers: "
            f"{[(a.status, round(a.started - started, 2)) for a in unexpected[:10]]}"
        )
    unanswered = tally.transport_errors()
    report.transport_errors = len(unanswered)
    if unanswered:
        report.failures.append(
            f"{len(unanswered)} POSTs got no HTTP answer (the API is never stopped): "
            f"{[(a.error, round(a.started - started, 2)) for a in unanswered[:10]]}"
        )
