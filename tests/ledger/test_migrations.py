"""Alembic migrations on fresh SQLite and PostgreSQL databases: idempotent, reversible, in step with the
schema, and the URL normaliser that every entry point goes through."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, inspect, text
from sqlalchemy.engine import make_url

from ledger import queries
from ledger.database import Database, normalize_url
from ledger.migrate import alembic_config, current_revision, upgrade
from ledger.schema import COUNTER_SLOTS, metadata
from ledger.states import Status
from tests.ledger.conftest import T0, claim, job_in, submit

TABLES = {"jobs", "attempts", "job_counts", "api_keys", "destinations", "callbacks"}


def head() -> str:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def downgrade(database: Database, revision: str = "base") -> None:
    """`alembic downgrade` on the database's own connection, as `ledger.migrate.upgrade` runs an upgrade."""
    config = alembic_config(database.engine.url.render_as_string(hide_password=False))

    def migrate(conn: Connection) -> None:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)

    database.run(migrate, transaction=True)


def tables(database: Database) -> set[str]:
    return database.run(lambda conn: set(inspect(conn).get_table_names())) - {"alembic_version"}


def schema_drift(database: Database) -> list:
    """What Alembic's autogenerate would change to make the migrated schema match `ledger.schema`."""
    return database.run(lambda conn: compare_metadata(MigrationContext.configure(conn), metadata))


def assert_ledger_works(database: Database) -> None:
    """The triggers are in place: attempts are recorded and the counters follow the statuses."""
    done = job_in(database, Status.SUCCESS, "done")
    job_in(database, Status.FAILED, "failed")
    held = submit(database, "held")
    claim(database, held)
    stats = database.run(lambda conn: queries.queue_stats(conn, now=T0))
    assert stats.counts == database.run(queries.count_by_status)
    assert (stats.counts[Status.SUCCESS], stats.counts[Status.FAILED], stats.counts[Status.PROCESSING]) == (1, 1, 1)
    assert [a.outcome for a in database.run(lambda conn: queries.list_attempts(conn, done))] == ["success"]
    slots = database.run(lambda conn: conn.exec_driver_sql("SELECT count(*) FROM job_counts").scalar_one())
    assert slots == COUNTER_SLOTS


@pytest.fixture
def fresh_sqlite(tmp_path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'nested' / 'fresh.sqlite3'}")
    yield database
    database.dispose()


@pytest.fixture
def fresh_postgres(postgres_server_url: str) -> Iterator[Database]:
    """An empty database of its own on the test server, dropped afterwards."""
    admin = create_engine(normalize_url(postgres_server_url), isolation_level="AUTOCOMMIT")
    name = f"wjp_migrations_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    database = Database(make_url(normalize_url(postgres_server_url)).set(database=name).render_as_string(False))
    yield database
    database.dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def fresh(request: pytest.FixtureRequest) -> Database:
    return request.getfixturevalue("fresh_postgres" if request.param == "postgresql" else "fresh_sqlite")


def test_the_head_revision_is_the_last_of_one_linear_history():
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1
    revisions = [r.revision for r in script.walk_revisions()]
    assert revisions[0] == head() and revisions[-1] == "0001"


def test_a_fresh_database_migrates_to_head_and_a_second_migration_changes_nothing(fresh):
    assert current_revision(fresh) is None

    upgrade(fresh)
    assert current_revision(fresh) == head()
    assert tables(fresh) == TABLES
    upgrade(fresh)

    assert current_revision(fresh) == head()
    assert tables(fresh) == TABLES
    assert_ledger_works(fresh)


def test_the_migrated_schema_matches_the_tables_the_code_declares(fresh):
    upgrade(fresh)

    assert schema_drift(fresh) == []


def test_downgrade_to_base_removes_everything_and_upgrade_rebuilds_a_working_ledger(fresh):
    upgrade(fresh)
    assert_ledger_works(fresh)

    downgrade(fresh, "base")

    assert current_revision(fresh) is None
    assert tables(fresh) == set()
    if fresh.dialect == "postgresql":
        leftovers = fresh.run(
            lambda conn: conn.execute(text("SELECT proname FROM pg_proc WHERE proname LIKE 'wjp%'")).scalars().all()
        )
        assert leftovers == []

    upgrade(fresh)
    assert current_revision(fresh) == head()
    assert tables(fresh) == TABLES
    assert_ledger_works(fresh)


def test_each_revision_downgrades_one_step_and_upgrades_again(fresh):
    upgrade(fresh)
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    for revision in script.walk_revisions():
        downgrade(fresh, "-1")
        assert current_revision(fresh) == revision.down_revision
    upgrade(fresh)
    assert current_revision(fresh) == head()


def test_a_partial_upgrade_stops_at_the_revision_asked(fresh):
    upgrade(fresh, "0001")
    assert current_revision(fresh) == "0001"
    upgrade(fresh)
    assert current_revision(fresh) == head()
    indexes = fresh.run(lambda conn: {ix["name"] for ix in inspect(conn).get_indexes("jobs")})
    assert {
        "ix_jobs_processing_claimed_at",
        "ix_jobs_waiting_next_attempt_at",
        "ix_jobs_failed_completed_at",
    } <= indexes


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u:p@db.example:5432/wjp", "postgresql+psycopg://u:p@db.example:5432/wjp"),
        ("postgresql://u@db.example/wjp", "postgresql+psycopg://u@db.example/wjp"),
        (
            "postgresql://u:p%40ss@db.example/wjp?sslmode=require",
            "postgresql+psycopg://u:p%40ss@db.example/wjp?sslmode=require",
        ),
        ("postgresql+psycopg://u@db.example/wjp", "postgresql+psycopg://u@db.example/wjp"),
        ("sqlite:///var/wjp.sqlite3", "sqlite:///var/wjp.sqlite3"),
        ("sqlite:////abs/path/wjp.sqlite3", "sqlite:////abs/path/wjp.sqlite3"),
        ("sqlite://", "sqlite://"),
    ],
)
def test_the_url_normaliser_accepts_postgresql_and_sqlite_urls(url, expected):
    assert normalize_url(url) == expected
    assert make_url(normalize_url(url)).get_backend_name() in ("postgresql", "sqlite")


def test_postgresql_urls_are_driven_by_psycopg_3():
    for url in ("postgres://u@h/d", "postgresql://u@h/d"):
        assert make_url(normalize_url(url)).get_driver_name() == "psycopg"


@pytest.mark.parametrize(
    "url",
    ["mysql://u:p@db.example/wjp", "mysql+pymysql://u@h/d", "oracle://u@h/d", "garbage", "", "://", "redis://h:6379/0"],
)
def test_the_url_normaliser_rejects_other_databases_and_garbage_with_value_error(url):
    with pytest.raises(ValueError):
        normalize_url(url)
