"""Fuzzing the API from its own OpenAPI document (schemathesis): generated requests, valid and invalid, to every
operation of the app, wired to a real ledger and Redis, never get a 5xx. Bounded and deterministic: a fixed
number of examples per operation and mode, derived from a fixed seed."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from ledger import api_keys
from ledger.timestamps import utcnow
from service.app import create_app
from service.openapi import document
from service.settings import ServiceSettings
from tests.conftest import settings_env

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
#: Every operation the document names, read from the document itself so that a new route is fuzzed too.
OPERATIONS = sorted(
    (path, method.upper())
    for path, item in document(["email", "log", "webhook"])["paths"].items()
    for method in item
    if method in HTTP_METHODS
)
#: Generated requests per operation, valid and invalid ones mixed.
EXAMPLES = 40


@pytest.fixture(params=["open", "guarded"])
def api_schema(request, postgres_db, dispatcher, redis_server_url, queue_name, tmp_path):
    """The schema as the app serves it, bound to the app (requests go through ASGI, no server needed): once
    open, once guarded by an admin token and a producer key, so that the guards see the generated requests too."""
    env = {"WJP_OUTBOX_DIR": str(tmp_path / "outbox")}
    if request.param == "guarded":
        env["WJP_ADMIN_TOKEN"] = "fuzz-admin-token"
        postgres_db.run(lambda conn: api_keys.create(conn, "fuzz", now=utcnow()), transaction=True)
    settings = ServiceSettings.from_env(settings_env(postgres_db, redis_server_url, queue_name, **env))
    app = create_app(settings, database=postgres_db, dispatcher=dispatcher)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


# One test per operation, built here rather than with `schema.parametrize()`: schemathesis's lazy fixture loader
# does not work with this pytest, and the app needs the test's ledger and Redis.
@pytest.mark.parametrize(("path", "method"), OPERATIONS, ids=[f"{m} {p}" for p, m in OPERATIONS])
def test_no_generated_request_gets_a_server_error(api_schema, path, method):
    operation = api_schema[path][method]
    # Invalid requests where the schema can express one (a bare string path parameter admits any value).
    requests = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )

    @given(case=requests)
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def call(case) -> None:
        case.call_and_validate(checks=[not_a_server_error])

    call()
