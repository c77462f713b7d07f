"""The listing of jobs on PostgreSQL and SQLite: newest first, every filter, the keyset walk pinned to the jobs
committed when it began, and an index behind each filter."""

from __future__ import annotations

import re
import uuid

import pytest
from sqlalchemy import bindparam, inspect, text, update

from ledger import intake, listing
from ledger.database import Database
from ledger.listing import Filters, Position
from ledger.schema import jobs
from ledger.states import Status
from tests.ledger.conftest import SECOND, T0, claim, job_in, notification, submit


def next_page(database: Database, filters: Filters, page: listing.Page, *, limit: int) -> listing.Page:
    return database.run(
        lambda conn: listing.list_jobs(conn, filters, limit=limit, horizon=page.horizon, after=page.after)
    )


def walk(database: Database, filters: Filters, *, limit: int = 2) -> list[uuid.UUID]:
    """Every job a walk returns, page after page, in order."""
    page = database.run(lambda conn: listing.list_jobs(conn, filters, limit=limit))
    found = [job.id for job in page.jobs]
    while page.after is not None:
        page = next_page(database, filters, page, limit=limit)
        found += [job.id for job in page.jobs]
    return found


def test_a_walk_returns_a_producers_jobs_newest_first_each_once(database):
    ids = [submit(database, f"k{i}", now=T0 + i * SECOND) for i in range(5)]
    submit(database, "theirs", now=T0 + 9 * SECOND, scope="other-key")

    assert walk(database, Filters(scope="")) == ids[::-1]
    assert walk(database, Filters(scope=""), limit=5) == ids[::-1]
    assert walk(database, Filters(scope="other-key")) != []
    assert walk(database, Filters(scope="nobody")) == []


def test_jobs_created_in_the_same_microsecond_are_ordered_by_id_and_none_is_skipped(database):
    ids = [submit(database, f"k{i}", now=T0) for i in range(5)]

    assert walk(database, Filters(scope=""), limit=2) == sorted(ids, reverse=True)


def test_each_filter_narrows_the_walk(database):
    email = submit(database, "e", now=T0, channel="email", destination="email:relay:25")
    hook_a = submit(database, "a", now=T0 + SECOND, channel="webhook", destination="webhook:a.example:443")
    hook_b = submit(database, "b", now=T0 + 2 * SECOND, channel="webhook", destination="webhook:b.example:443")
    failed = job_in(database, Status.FAILED, "f", now=T0 + 3 * SECOND)
    done = job_in(database, Status.SUCCESS, "s", now=T0 + 4 * SECOND)

    def only(**fields) -> list[uuid.UUID]:
        return walk(database, Filters(scope="", **fields))

    assert only(statuses=frozenset({Status.PENDING})) == [hook_b, hook_a, email]
    assert only(statuses=frozenset({Status.FAILED, Status.SUCCESS})) == [done, failed]
    assert only(statuses=frozenset({Status.FAILED, Status.SUCCESS, Status.PENDING})) == [
        done, failed, hook_b, hook_a, email
    ]  # fmt: skip
    assert only(statuses=frozenset({Status.CANCELLED})) == []
    assert only(channel="webhook") == [hook_b, hook_a]
    assert only(destination="webhook:a.example:443") == [hook_a]
    assert only(channel="email", destination="webhook:a.example:443") == []
    assert only(created_after=T0 + SECOND) == [done, failed, hook_b, hook_a]
    assert only(created_before=T0 + SECOND) == [email]
    assert only(created_after=T0 + SECOND, created_before=T0 + 3 * SECOND) == [hook_b, hook_a]
    assert only(channel="email", statuses=frozenset({Status.SUCCESS, Status.PENDING})) == [done, email]


def test_a_job_committed_after_the_walk_began_is_not_in_it_even_when_dated_before_its_position(database):
    """The case created_at alone cannot tell: an intake that took its time before the walk began and committed
    after the walk's first page, dated behind the walk's position. Without the horizon the walk returns it."""
    ids = [submit(database, f"k{i}", now=T0 + i * SECOND) for i in range(6)]
    filters = Filters(scope="")
    with database.connect(transaction=True) as slow:
        # Holds its transaction open (and, on SQLite, the write lock) while the walk begins.
        intake.accept(slow, notification("slow"), now=T0 + 2.5 * SECOND, dispatch_now=True)
        first = database.run(lambda conn: listing.list_jobs(conn, filters, limit=2))
    submit(database, "newest", now=T0 + 9 * SECOND)
    assert [job.id for job in first.jobs] == ids[:3:-1]

    found = [job.id for job in first.jobs]
    page = first
    while page.after is not None:
        page = next_page(database, filters, page, limit=2)
        found += [job.id for job in page.jobs]

    assert found == ids[::-1]
    assert len(walk(database, filters)) == 8  # a new walk sees both


def test_a_walk_keeps_going_past_jobs_that_arrive_between_its_pages(database):
    ids = [submit(database, f"k{i}", now=T0 + i * SECOND) for i in range(4)]
    filters = Filters(scope="")
    page = database.run(lambda conn: listing.list_jobs(conn, filters, limit=1))
    found = [job.id for job in page.jobs]
    n = 0
    while page.after is not None:
        n += 1
        submit(database, f"late-{n}", now=T0 + n * SECOND - SECOND / 2)  # between the pages, and dated among them
        page = next_page(database, filters, page, limit=1)
        found += [job.id for job in page.jobs]

    assert found == ids[::-1]


@pytest.mark.parametrize(
    ("dialect", "horizon", "valid"),
    [
        ("postgresql", "10:20:", True),
        ("postgresql", "10:20:10,15,19", True),
        ("postgresql", "10:10:", True),
        ("postgresql", "0:20:", False),
        ("postgresql", "20:10:", False),
        ("postgresql", "10:20:21", False),
        ("postgresql", "10:20:9", False),
        ("postgresql", "10:20:15,12", False),
        ("postgresql", "10:20:15,", False),
        ("postgresql", "10:99999999999999999999999:", False),
        ("postgresql", "10:20", False),
        ("postgresql", "x", False),
        ("sqlite", "0", True),
        ("sqlite", "123", True),
        ("sqlite", "-1", False),
        ("sqlite", "9223372036854775808", False),
        ("sqlite", "1.5", False),
    ],
)
def test_a_horizon_is_checked_before_it_reaches_a_statement(dialect, horizon, valid):
    assert listing.valid_horizon(dialect, horizon) is valid


def test_a_horizon_the_database_handed_out_is_valid_and_accepted(database):
    submit(database, "k0")
    page = database.run(lambda conn: listing.list_jobs(conn, Filters(scope=""), limit=1))
    assert listing.valid_horizon(database.dialect, page.horizon)
    again = database.run(
        lambda conn: listing.list_jobs(conn, Filters(scope=""), limit=1, horizon=page.horizon, after=None)
    )
    assert [job.id for job in again.jobs] == [job.id for job in page.jobs]


LATER = Position(T0 + 99 * SECOND, uuid.UUID(int=2**128 - 1))
STATUS = frozenset({Status.FAILED})


#: Where the plan tests' jobs are: the branches of a walk depend on the channels its scope's jobs are in.
CHANNELS = ("email", "webhook")
STATUS_INDEX = "ix_jobs_listing_status_channel"
DESTINATION_INDEX = "ix_jobs_listing_destination"


SET_STATUS = update(jobs).where(jobs.c.id == bindparam("job_id")).values(status=bindparam("status"))


@pytest.fixture
def jobs_in_two_channels(database):
    """A job of scope "k" in each status and each of `CHANNELS` (the statuses set directly: only the plans of
    reads of these rows are looked at)."""
    for channel in CHANNELS:
        for status in Status:
            job_id = submit(database, f"{channel}-{status}", scope="k", channel=channel, destination=f"{channel}:a:443")
            values = {"status": status.value, "job_id": job_id}
            database.run(lambda conn, values=values: conn.execute(SET_STATUS, values))


@pytest.mark.parametrize(
    ("filters", "index", "branches"),
    [
        (Filters(scope="k"), STATUS_INDEX, len(Status) * len(CHANNELS)),
        (Filters(scope="k", created_after=T0, created_before=T0 + SECOND), STATUS_INDEX, len(Status) * len(CHANNELS)),
        (Filters(scope="k", statuses=STATUS), STATUS_INDEX, len(CHANNELS)),
        (Filters(scope="k", statuses=frozenset({Status.FAILED, Status.CANCELLED})), STATUS_INDEX, 2 * len(CHANNELS)),
        (Filters(scope="k", channel="sms"), STATUS_INDEX, len(Status)),
        (Filters(scope="k", statuses=STATUS, channel="sms"), STATUS_INDEX, 1),
        (Filters(scope="k", destination="webhook:a:443"), DESTINATION_INDEX, 1),
        (Filters(scope="k", destination="webhook:a:443", channel="webhook"), DESTINATION_INDEX, 1),
        (Filters(scope="k", destination="webhook:a:443", statuses=frozenset(Status)), DESTINATION_INDEX, len(Status)),
    ],
    ids=[
        "none",
        "created",
        "status",
        "statuses",
        "channel",
        "status_channel",
        "destination",
        "destination_channel",
        "destination_statuses",
    ],
)
def test_every_filter_is_served_by_an_index_in_walk_order(database, jobs_in_two_channels, filters, index, branches):
    """The plan reads the filter's index from the cursor down, in order, once per branch: no sort of the matching
    rows. A branch is a status and a channel when the status index serves the walk (its order is (created_at, id)
    only within both), a status when the destination index does."""
    plan = database.run(lambda conn: explain(conn, filters))

    assert plan.count(index) == branches
    if database.dialect == "postgresql":
        assert "Index Scan" in plan and "Seq Scan" not in plan
        # Several branches, each in order, merged (Merge Append); never a Sort node.
        assert re.search(r"^\s*(->\s+)?Sort\s+\(", plan, re.MULTILINE) is None
        assert ("Merge Append" in plan) is (branches > 1)
    else:
        assert "SCAN jobs" not in plan
        assert "TEMP B-TREE" not in plan or branches > 1


def test_the_listing_has_no_plain_index_and_no_channel_index(database):
    """Every new row and status change writes two index entries fewer: the walks they served are served by the
    status index, which holds the channel after the status."""
    indexes = database.run(lambda conn: {ix["name"]: ix["column_names"] for ix in inspect(conn).get_indexes("jobs")})

    assert "ix_jobs_listing" not in indexes
    assert "ix_jobs_listing_channel" not in indexes and "ix_jobs_listing_status" not in indexes
    assert indexes[STATUS_INDEX] == ["scope", "status", "channel", "created_at", "id"]


def test_the_channels_of_a_scope_are_found_in_order_by_probes_of_the_status_index(database):
    for i, channel in enumerate(["webhook", "sms", "webhook", "sms"]):
        submit(database, f"k{i}", channel=channel)
    job_in(database, Status.FAILED, "failed")  # by email
    submit(database, "theirs", scope="other", channel="log")

    def channels(scope: str, statuses=tuple(Status)) -> list[str]:
        return database.run(lambda conn: listing.channels_in_scope(conn, scope, statuses))

    plan = database.run(lambda conn: explain_channels(conn, ""))

    assert channels("") == ["email", "sms", "webhook"]
    assert channels("", [Status.FAILED]) == ["email"]
    assert channels("", [Status.PENDING, Status.CANCELLED]) == ["sms", "webhook"]
    assert channels("nobody") == []
    assert STATUS_INDEX in plan
    if database.dialect == "postgresql":
        assert "Seq Scan" not in plan and "Sort" not in plan
    else:
        assert "SCAN jobs" not in plan


def test_a_walk_with_no_filter_returns_each_job_once_while_their_statuses_change(database):
    channels = ["email", "webhook", "sms"]
    ids = [submit(database, f"k{i}", now=T0 + i * SECOND, channel=channels[i % 3]) for i in range(6)]
    done = job_in(database, Status.SUCCESS, "done", now=T0 + 6 * SECOND)
    failed = job_in(database, Status.FAILED, "failed", now=T0 + 7 * SECOND)
    filters = Filters(scope="")
    page = database.run(lambda conn: listing.list_jobs(conn, filters, limit=2))
    found = [job.id for job in page.jobs]
    claimed = 0
    while page.after is not None:
        # A job not yet listed moves from PENDING to PROCESSING between the pages: it is listed once, all the same.
        claim(database, ids[claimed])
        claimed += 1
        page = next_page(database, filters, page, limit=2)
        found += [job.id for job in page.jobs]

    assert found == [failed, done, *ids[::-1]]


def explain(conn, filters: Filters) -> str:
    """The plan of a page past a position, on a planner told that scans and sorts cost a great deal (the
    tables here are tiny: left to itself it would rightly read them whole)."""
    if conn.dialect.name == "postgresql":
        snapshot = str(conn.execute(text("SELECT pg_current_snapshot()")).scalar_one())
        statement = listing.page_statement(conn, filters, snapshot, LATER, 51)
        return explain_on_postgresql(conn, str(statement.compile(conn, compile_kwargs={"literal_binds": True})))
    statement = listing.page_statement(conn, filters, "1", LATER, 51)
    compiled = statement.compile(conn, compile_kwargs={"literal_binds": True})
    return "\n".join(row[-1] for row in conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))


def explain_channels(conn, scope: str) -> str:
    statement = listing.channels_statement(scope, sorted(Status))
    sql = str(statement.compile(conn, compile_kwargs={"literal_binds": True}))
    if conn.dialect.name == "postgresql":
        return explain_on_postgresql(conn, sql)
    return "\n".join(row[-1] for row in conn.execute(text(f"EXPLAIN QUERY PLAN {sql}")))


def explain_on_postgresql(conn, sql: str) -> str:
    settings = ("enable_seqscan", "enable_bitmapscan", "enable_sort")
    for setting in settings:
        conn.execute(text(f"SET {setting} = off"))
    rows = conn.execute(text(f"EXPLAIN {sql}")).scalars().all()
    for setting in settings:
        conn.execute(text(f"RESET {setting}"))
    return "\n".join(rows)


def test_a_position_after_created_before_leaves_the_range_to_created_before(database):
    """Both bounds would make PostgreSQL read the index from the position down to created_before, entry by entry;
    the position adds nothing when created_before is below it. The walk is the same."""
    ids = [submit(database, f"k{i}", now=T0 + i * SECOND) for i in range(4)]
    filters = Filters(scope="", created_before=T0 + 2 * SECOND)
    above = Position(T0 + 3 * SECOND, ids[3])

    horizon = database.run(lambda conn: listing.list_jobs(conn, filters, limit=1).horizon)
    statement = database.run(lambda conn: listing.page_statement(conn, filters, horizon, above, 51))
    page = database.run(lambda conn: listing.list_jobs(conn, filters, limit=5, horizon=horizon, after=above))

    assert "after_created_at" not in statement.compile().params
    assert [job.id for job in page.jobs] == [ids[1], ids[0]]


def test_the_limit_is_held_to_its_bounds(database):
    for limit in (0, listing.MAX_LIMIT + 1):
        with pytest.raises(ValueError):
            database.run(lambda conn, limit=limit: listing.list_jobs(conn, Filters(scope=""), limit=limit))


def test_jobs_older_than_the_creating_transaction_column_are_in_every_walk(database):
    ids = [submit(database, f"k{i}", now=T0 + i * SECOND) for i in range(3)]
    database.run(lambda conn: conn.execute(text("UPDATE jobs SET created_xid = NULL")), transaction=True)

    assert walk(database, Filters(scope=""), limit=1) == ids[::-1]


def test_on_postgresql_the_listing_indexes_do_not_try_to_deduplicate_their_never_equal_entries(postgres_db):
    """Each entry ends with the job's id: a deduplication pass, tried on every full page before it splits, could
    merge nothing (bench/README.md, 2026-12-04 07:08)."""
    options = postgres_db.run(
        lambda conn: dict(
            conn.execute(
                text("SELECT relname, reloptions FROM pg_class WHERE relname LIKE 'ix_jobs_listing%' AND relkind = 'i'")
            ).all()
        )
    )

    assert options == {name: ["deduplicate_items=off"] for name in (STATUS_INDEX, DESTINATION_INDEX)}


@pytest.mark.parametrize(
    "filters", [Filters(scope=""), Filters(scope="", statuses=STATUS, channel="email")], ids=["merged", "one_range"]
)
def test_a_pages_limit_is_written_into_its_statement_not_bound(database, filters):
    """PostgreSQL keeps a prepared statement's generic plan only when it looks no costlier than a custom one; with
    the LIMIT a bound value it never did, and every page of a big ledger paid for its planning (bench/README.md,
    issue 20). Only a big table shows it; here, the statement."""
    job_in(database, Status.FAILED, "k")

    statement = database.run(lambda conn: listing.page_statement(conn, filters, "1", LATER, 51))
    compiled = statement.compile(dialect=database.engine.dialect)

    assert re.findall(r"LIMIT (\w+)", str(compiled)) == ["51"] * str(compiled).count("LIMIT")
