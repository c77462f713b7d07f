"""What the tests of refused requests share: a case of their tables (`Bad`) and its check, a body with one value
spliced in as raw JSON, and one ledger per database for a whole module, with one app per configuration on it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from falcon import testing

from actors.broker import Dispatcher, make_broker
from ledger.database import Database
from ledger.migrate import upgrade
from service.app import create_app
from service.settings import ServiceSettings
from tests.conftest import delete_queue_keys, reset_ledger, settings_env
from tests.service.conftest import assert_error, job_count, notification, post


@dataclass(frozen=True)
class Bad:
    """A request to POST and what the answer must be."""

    body: Any
    status: int = 400
    code: str = "validation_error"
    #: For validation errors: exactly the fields `details` must name.
    fields: tuple[str | None, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


def with_raw_value(name: str, literal: str) -> str:
    """A valid body whose field `name` is the JSON literal text `literal`, spliced in verbatim."""
    body = notification(**{name: "PLACEHOLDER"})
    return json.dumps(body).replace('"PLACEHOLDER"', literal)


def assert_refused(client: testing.TestClient, ledger: Database, case: Bad) -> None:
    """POSTing `case.body` gets the case's status and one JSON error naming what is wrong, and records nothing."""
    jobs_before = job_count(ledger)

    result = post(client, case.body, **case.headers)

    error = assert_error(result, case.status, case.code)
    if case.code == "validation_error":
        assert [d.get("field") for d in error["details"]] == list(case.fields), error
        assert all(isinstance(d.get("message"), str) and d["message"] for d in error["details"]), error
        for name in case.fields:
            if name is not None:
                assert name in error["message"], error
    # Nothing is half-written
    assert job_count(ledger) == jobs_before


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def ledger(
    request: pytest.FixtureRequest, app_settings: set[frozenset[tuple[str, str]]], tmp_path_factory
) -> Iterator[Database]:
    """One ledger per database for the whole module: the bad requests must leave it untouched, and sharing it keeps
    a table of a hundred cases fast. `app_settings`: the module's fixture naming the settings of every app it builds."""
    if request.param == "postgresql":
        # Each app `shared_client_for` builds keeps a connection for its intake batching thread while the module
        # runs: with fewer kept connections than apps, the last app's first POST waits out the pool's timeout.
        database = Database(request.getfixturevalue("postgres_server_url"), pool_size=2, kept=len(app_settings))
        reset_ledger(database)
    else:
        database = Database(f"sqlite:///{tmp_path_factory.mktemp('validation') / 'ledger.sqlite3'}")
        upgrade(database)
    yield database
    database.dispose()


@pytest.fixture(scope="module")
def shared_client_for(ledger: Database, redis_server_url: str, tmp_path_factory) -> Iterator[Callable[..., Any]]:
    """Like `make_client`, on the module's ledger and a queue of its own: one app per configuration."""
    queue = f"test-{uuid.uuid4().hex[:12]}"
    dispatcher = Dispatcher(make_broker(redis_server_url), queue)
    outbox = str(tmp_path_factory.mktemp("outbox"))

    apps: dict[frozenset[tuple[str, str]], testing.TestClient] = {}

    def build(**env: str) -> testing.TestClient:
        # Building an app builds its channels (HTTP clients, TLS contexts): once per configuration is enough.
        key = frozenset(env.items())
        if key not in apps:
            settings = ServiceSettings.from_env(
                settings_env(ledger, redis_server_url, queue, WJP_OUTBOX_DIR=outbox, **env)
            )
            apps[key] = testing.TestClient(create_app(settings, database=ledger, dispatcher=dispatcher))
        return apps[key]

    yield build
    delete_queue_keys(redis_server_url, queue)


@pytest.fixture
def client(shared_client_for) -> testing.TestClient:
    """This module's `client`: on the shared ledger."""
    return shared_client_for()
