"""An API client on the app factory's app, wired to the test's ledger and Redis queue."""

from __future__ import annotations

import pytest
from falcon import testing

from actors.broker import Dispatcher
from ledger.database import Database
from service.app import create_app
from service.settings import ServiceSettings
from tests.conftest import settings_env


@pytest.fixture
def make_client(database: Database, dispatcher: Dispatcher, redis_server_url: str, queue_name: str, tmp_path):
    def build(**env: str) -> testing.TestClient:
        env.setdefault("WJP_OUTBOX_DIR", str(tmp_path / "outbox"))
        settings = ServiceSettings.from_env(settings_env(database, redis_server_url, queue_name, **env))
        return testing.TestClient(create_app(settings, database=database, dispatcher=dispatcher))

    return build


@pytest.fixture
def client(make_client) -> testing.TestClient:
    return make_client()
