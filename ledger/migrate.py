"""Create or upgrade the ledger schema with Alembic, from any working directory."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

from ledger.database import Database

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(database: Database, revision: str = "head") -> None:
    """Bring the ledger's schema to `revision` (the latest by default), in one transaction."""
    config = alembic_config(database.engine.url.render_as_string(hide_password=False))

    def migrate(conn: Connection) -> None:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)

    database.run(migrate, transaction=True)


def current_revision(database: Database) -> str | None:
    return database.run(lambda conn: MigrationContext.configure(conn).get_current_revision())
