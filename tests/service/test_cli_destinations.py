"""`wjp destinations [set|clear|reset] [KEY]` as an operator runs it: real processes on the test's ledger and the
gate's state in the real Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from actors.flow import BreakerPolicy, Gate, Outcome
from actors.flow.gate import DEFAULT_PREFIX
from ledger import destinations
from ledger.database import Database
from ledger.destinations import Limits
from tests.conftest import free_port
from tests.e2e.conftest import process_env, run_wjp
from tests.service.test_cli_ops import record


@pytest.fixture
def wjp(database: Database, redis_server_url: str, queue_name: str):
    # The PostgreSQL ledger is shared by the session's tests, and its reset leaves the overrides alone.
    database.run(lambda conn: conn.exec_driver_sql("DELETE FROM destinations"), transaction=True)

    def run(*args: str, **env: str):
        values = {
            "DATABASE_URL": database.engine.url.render_as_string(hide_password=False),
            "REDIS_URL": redis_server_url,
            "WJP_QUEUE": queue_name,
            **env,
        }
        return run_wjp(list(args), process_env(**values))

    return run


@pytest.fixture
def tripped(redis_server_url: str) -> Iterator[tuple[Gate, str]]:
    """A destination of this test's own whose circuit is open, under the gate's real prefix (the command's)."""
    client = redis.Redis.from_url(redis_server_url)
    gate = Gate(client)
    key = f"webhook:{uuid.uuid4().hex[:12]}.example.com:443"
    gate.admit(key, "lease", lease_seconds=60, concurrency=None, rate=None)
    gate.release(key, "lease", Outcome.TRANSIENT, breaker=BreakerPolicy(threshold=1))
    yield gate, key
    client.delete(f"{DEFAULT_PREFIX}state:{key}", f"{DEFAULT_PREFIX}leases:{key}")
    client.zrem(f"{DEFAULT_PREFIX}known", key)
    client.close()


def rows(output: str) -> dict[str, list[str]]:
    lines = output.splitlines()
    assert lines[0].split() == [
        "key", "concurrency", "rate", "in_flight", "circuit", "failures", "opened_until", "paused_until", "waiting",
    ]  # fmt: skip
    return {line.split()[0]: line.split()[1:] for line in lines[1:] if not line.startswith("*")}


def test_set_changes_the_limits_it_names_none_takes_one_back_and_clear_takes_both(wjp, database) -> None:
    key = "webhook:hooks.example.com:443"

    first = wjp("destinations", "set", "webhook:Hooks.Example.com:443", "--concurrency", "4", "--rate", "0.5")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"{key}: concurrency 4, rate 0.5/s")
    assert database.run(destinations.overrides) == {key: Limits(4, 0.5)}

    assert wjp("destinations", "set", key, "--rate", "none").returncode == 0
    assert database.run(destinations.overrides) == {key: Limits(4, None)}
    listed = wjp("destinations")
    assert rows(listed.stdout)[key][:2] == ["4*", "-"], listed.stdout

    cleared = wjp("destinations", "clear", key)
    assert (cleared.returncode, cleared.stdout.strip()) == (0, f"{key}: back to the default limits")
    assert database.run(destinations.overrides) == {}


def test_the_table_shows_open_circuits_and_waiting_jobs_and_reset_closes_a_circuit(wjp, database, tripped) -> None:
    gate, key = tripped
    record(database, channel="log")

    table = rows(wjp("destinations").stdout)
    assert table[key][3:5] == ["open", "1"]
    assert table["log"][-1] == "1"

    reset = wjp("destinations", "reset", key)
    assert reset.returncode == 0
    assert reset.stdout.strip().startswith(f"{key}: circuit closed and pause lifted; ")
    assert gate.inspect([key])[0].circuit == "closed"


@pytest.mark.parametrize("args", [["set", "webhook:", "--rate", "1"], ["clear", "Nope"], ["reset", "webhook:[x]"]])
def test_a_malformed_key_is_one_line_of_error(wjp, args: list[str]) -> None:
    result = wjp("destinations", *args)

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "not a destination key" in result.stderr, result.stderr


def test_set_without_a_limit_or_with_a_bad_one_changes_nothing(wjp, database) -> None:
    assert wjp("destinations", "set", "log").returncode == 1
    assert wjp("destinations", "set", "log", "--concurrency", "0").returncode == 2
    assert wjp("destinations", "set", "log", "--rate", "fast").returncode == 2
    assert database.run(destinations.overrides) == {}


def test_with_redis_down_the_listing_says_so_in_one_line(wjp) -> None:
    result = wjp("destinations", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Redis unreachable" in result.stderr, result.stderr
