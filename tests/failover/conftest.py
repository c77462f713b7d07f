"""Fixtures of replicated servers for the tests of failover: a PostgreSQL primary with a standby, and a Redis
master with a replica and three Sentinels; each test gets its own, since it kills and promotes them."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chaos.servers import missing_postgres
from tests.conftest import unavailable
from tests.failover.servers import ReplicatedCluster, SentinelGroup


@dataclass
class PostgresPair:
    primary: ReplicatedCluster
    standby: ReplicatedCluster

    @property
    def url(self) -> str:
        """Both hosts in libpq's form, the primary first: whichever takes writes is the one connected to."""
        hosts = f"127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
        return f"postgresql://postgres@{hosts}/postgres?target_session_attrs=read-write"


@pytest.fixture
def pg_pair() -> Iterator[PostgresPair]:
    reason = missing_postgres()
    if reason:
        unavailable(reason)
    primary, standby = ReplicatedCluster(), ReplicatedCluster()
    try:
        # Asynchronous: these tests promote the standby after killing the primary, never the other way round.
        primary.init_primary(synchronous=False)
        primary.start()
        standby.init_standby(primary)
        standby.start()
        yield PostgresPair(primary, standby)
    finally:
        primary.stop()
        standby.stop()


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not on PATH")
    group = SentinelGroup(tmp_path / "redis")
    try:
        group.start()
        yield group
    finally:
        group.stop()
