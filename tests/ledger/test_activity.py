"""Operators' lookups (`ledger.activity`): found by job id or by idempotency key, and any text at all is a
lookup that answers, never a database error."""

from __future__ import annotations

from ledger import activity
from tests.ledger.conftest import submit


def test_a_job_is_found_by_its_id_and_by_its_idempotency_key(database):
    job_id = submit(database, "order-17")

    by_id = database.run(lambda conn: activity.find_jobs(conn, str(job_id)))
    by_key = database.run(lambda conn: activity.find_jobs(conn, "order-17"))

    assert [job.id for job in by_id] == [job_id]
    assert [job.id for job in by_key] == [job_id]


def test_a_lookup_text_with_a_nul_character_finds_nothing_instead_of_failing(database):
    # Found by fuzzing the API: GET /internal/dashboard?q=%00 was a 500, since PostgreSQL text cannot hold NUL.
    submit(database, "order-17")

    assert database.run(lambda conn: activity.find_jobs(conn, "order-17\x00")) == []
    assert database.run(lambda conn: activity.find_jobs(conn, "\x00")) == []
