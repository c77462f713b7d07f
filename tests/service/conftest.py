"""An API client on the app factory's app, wired to the test's ledger and Redis queue, and the helpers the HTTP
tests share: request bodies, the error-shape check, the Redis queue's contents and a worker driving the ledger."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from falcon import testing

from actors.broker import NAMESPACE, Dispatcher, make_broker
from actors.flow import Gate
from ledger import claims, queries, transitions
from ledger.database import Database
from ledger.states import Outcome, Status
from ledger.timestamps import utcnow
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


#: Marks a field to leave out of `notification(...)`.
ABSENT: Any = object()

#: The keys of the error body of every 4xx and 5xx.
ERROR_KEYS = {"error", "message", "details"}


def notification(**fields: Any) -> dict[str, Any]:
    """A valid request body with a fresh idempotency key; `fields` override it, `ABSENT` removes a field."""
    body: dict[str, Any] = {
        "recipient": "user@example.com",
        "channel": "email",
        "message": "Halo dari sistem worker!",
        "idempotency_key": f"key-{uuid.uuid4().hex}",
    }
    body.update(fields)
    return {name: value for name, value in body.items() if value is not ABSENT}


def post(client: testing.TestClient, body: Any, **headers: str) -> testing.Result:
    """POST `body` (a dict, or raw bytes/str sent as is) to /api/notifications as JSON."""
    headers.setdefault("Content-Type", "application/json")
    raw = body if isinstance(body, bytes | str) else json.dumps(body, ensure_ascii=False).encode("utf-8")
    return client.simulate_post("/api/notifications", body=raw, headers=headers)


def simulate_on_own_loop(app: Any, method: str, path: str, **kwargs: Any) -> testing.Result:
    """`method path` through the ASGI `app` on an event loop of the calling thread's own. Threads racing this way
    stand for API processes: each loop has its own intake groups, so they race on the ledger as processes do."""

    async def simulate() -> testing.Result:
        async with testing.ASGIConductor(app) as conductor:
            return await conductor.simulate_request(method, path, **kwargs)

    return asyncio.run(simulate())


def assert_error(result: testing.Result, status: int, code: str) -> dict[str, Any]:
    """The response is a JSON error of the contract's shape with this status and code; returns the body."""
    assert result.status_code == status, result.text
    assert result.headers["content-type"].split(";")[0].strip() == "application/json", result.headers
    body = json.loads(result.text)
    assert set(body) == ERROR_KEYS, body
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"].strip(), body
    assert isinstance(body["details"], list), body
    return body


def ledger_counts(database: Database) -> dict[Status, int]:
    return database.run(queries.count_by_status)


def job_count(database: Database) -> int:
    return sum(ledger_counts(database).values())


class RedisMessages:
    """What the test's queue holds in Redis: messages ready now and messages in the delay queue, by Redis id."""

    def __init__(self, client: redis.Redis, queue: str) -> None:
        self.client = client
        self.queue = queue

    def _hash(self, key: str) -> dict[str, dict[str, Any]]:
        return {rid.decode(): json.loads(body) for rid, body in self.client.hgetall(key).items()}

    def queued(self) -> dict[str, dict[str, Any]]:
        return self._hash(f"{NAMESPACE}:{self.queue}.msgs")

    def delayed(self) -> dict[str, dict[str, Any]]:
        return self._hash(f"{NAMESPACE}:{self.queue}.DQ.msgs")


@pytest.fixture
def redis_messages(redis_server_url: str, queue_name: str) -> Iterator[RedisMessages]:
    client = redis.Redis.from_url(redis_server_url)
    yield RedisMessages(client, queue_name)
    client.close()


@pytest.fixture
def gate(redis_server_url: str) -> Iterator[Gate]:
    """The destinations' gate under a prefix of the test's own, deleted afterwards."""
    client = redis.Redis.from_url(redis_server_url)
    gate = Gate(client, prefix=f"wjp:test-flow-{uuid.uuid4().hex[:10]}:")
    yield gate
    keys = list(client.scan_iter(match=f"{gate.prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def client_for(redis_server_url: str, queue_name: str, tmp_path) -> Callable[..., testing.TestClient]:
    """A client on an app built like `make_client`'s, but on the ledger and dispatcher given (even broken ones)."""

    def build(database: Database, dispatcher: Dispatcher | None = None, **env: str) -> testing.TestClient:
        env.setdefault("WJP_OUTBOX_DIR", str(tmp_path / "outbox"))
        settings = ServiceSettings.from_env(settings_env(database, redis_server_url, queue_name, **env))
        if dispatcher is None:
            dispatcher = Dispatcher(make_broker(redis_server_url), queue_name)
        return testing.TestClient(create_app(settings, database=database, dispatcher=dispatcher))

    return build


class Worker:
    """Moves jobs through the lifecycle the way the delivery actor does: claim, then record the outcome."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.seq: dict[uuid.UUID, int] = {}

    def _run(self, operation: Callable):
        return self.database.run(operation, transaction=True)

    def claim(self, job_id: str) -> int:
        key = uuid.UUID(job_id)
        seq = self.seq.get(key, 1)
        claimed = self._run(lambda conn: claims.claim(conn, key, seq, now=utcnow(), worker="test"))
        assert claimed is not None, f"could not claim {job_id} at dispatch {seq}"
        return claimed.attempt

    def succeed(self, job_id: str, attempt: int) -> None:
        assert self._run(lambda conn: claims.succeed(conn, uuid.UUID(job_id), attempt, now=utcnow()))

    def fail(self, job_id: str, attempt: int, error: str = "550 mailbox unavailable") -> None:
        key = uuid.UUID(job_id)
        now = utcnow()
        outcome = Outcome.PERMANENT_ERROR
        assert self._run(lambda conn: transitions.fail(conn, key, attempt, now=now, outcome=outcome, error=error))

    def retry_later(self, job_id: str, attempt: int, *, due_in: float = 0.0, error: str = "timed out") -> None:
        key, now = uuid.UUID(job_id), utcnow()
        due = now + timedelta(seconds=due_in)
        dispatch = self._run(
            lambda conn: transitions.schedule_retry(conn, key, attempt, now=now, due_at=due, error=error)
        )
        assert dispatch is not None
        self.seq[key] = dispatch.seq

    def deliver_after_failures(self, job_id: str, failures: int) -> None:
        """`failures` transient failures, each retried at once, then a success."""
        for _ in range(failures):
            self.retry_later(job_id, self.claim(job_id))
        self.succeed(job_id, self.claim(job_id))

    def fail_for_good(self, job_id: str) -> None:
        self.fail(job_id, self.claim(job_id))
