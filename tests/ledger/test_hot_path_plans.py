"""The hot path's prepared statements read `jobs` by key, whatever the table looked like when their plan was made.

A kept connection plans each statement once (a generic plan, `ledger.database`) and keeps that plan until the next
ANALYZE; made on an empty or just-truncated `jobs` (a fresh install, the fixture here, every `make bench` run), a
plan that scans the table grows dearer with every row the table gains.
"""

from __future__ import annotations

import json
from typing import Any

from psycopg import ClientCursor
from psycopg.sql import SQL, Literal

from ledger import intake
from ledger.intake import Accepting
from tests.ledger.conftest import T0, notification


def group(tag: str, size: int) -> list[Accepting]:
    return [Accepting(notification(f"{tag}-{i}"), T0, True) for i in range(size)]


def rows_read_from_jobs(plan: dict[str, Any]) -> int:
    """Rows every scan of `jobs` in an EXPLAIN (ANALYZE, FORMAT JSON) plan returned, over all its loops."""
    read = 0
    if plan.get("Relation Name") == "jobs" and "Scan" in plan["Node Type"]:
        read += plan["Actual Rows"] * plan["Actual Loops"] + plan.get("Rows Removed by Filter", 0)
        read += plan.get("Heap Fetches", 0) if plan["Node Type"] == "Bitmap Heap Scan" else 0
    return read + sum(rows_read_from_jobs(child) for child in plan.get("Plans", []))


def explain_prepared(conn: Any, statement_start: str, values: dict[str, Any]) -> dict[str, Any]:
    """EXPLAIN ANALYZE of the connection's prepared statement whose text starts so, run with `values` by type."""
    driver = conn.connection.driver_connection
    name, types = driver.execute(
        "SELECT name, parameter_types::text[] FROM pg_prepared_statements WHERE statement LIKE %s",
        (statement_start + "%",),
    ).fetchone()
    arguments = SQL(", ").join(Literal(values[kind]) + SQL("::" + kind) for kind in types)
    query = SQL("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {} ({})").format(SQL(name), arguments)
    (document,) = ClientCursor(driver).execute(query).fetchone()
    return (document if isinstance(document, list) else json.loads(document))[0]["Plan"]


def test_a_group_insert_planned_on_an_empty_table_still_finds_its_own_rows_by_key(postgres_db):
    # The fixture has just truncated `jobs`: the kept connection's plan is made on an empty table.
    postgres_db.run(lambda conn: intake.accept_many(conn, group("first", 3)), kept=True)
    for n in range(5):
        postgres_db.run(lambda conn, n=n: intake.accept_many(conn, group(f"fill-{n}", 100)), kept=True)
    probe = group("probe", 4)
    encoded = intake._ROWS.encode([item.row() for item in probe]).decode()

    plan = postgres_db.run(
        lambda conn: explain_prepared(
            conn, "WITH inserted AS", {"json": encoded, "character varying": "PENDING", "smallint": 0, "integer": 0}
        ),
        kept=True,
    )

    # Its own new rows are looked up once each by primary key (not visible yet: none found); a plan that hashes or
    # scans `jobs` reads the 503 rows already there.
    assert rows_read_from_jobs(plan) <= len(probe)
