"""The reduced failover drill that `make test` includes: 25 s of traffic at 100 POST/s through a kill -9 of the
Redis master (the Sentinels promote its replica) and of the PostgreSQL primary (its synchronous standby promoted).
`make failover` runs a minute."""

from __future__ import annotations

import pytest

from tests.chaos.servers import missing_servers
from tests.conftest import unavailable
from tests.failover.drill import FailoverDrill
from tests.failover.report import DrillConfig


@pytest.mark.slow
@pytest.mark.xdist_group("fault-drills")
def test_nothing_accepted_is_lost_when_the_redis_master_and_the_postgresql_primary_fail_over(tmp_path):
    reason = missing_servers()
    if reason:
        unavailable(reason)
    drill = FailoverDrill(DrillConfig(seconds=25.0), tmp_path)

    report = drill.run()

    assert report.ok, f"{report.to_json()}\n{drill.system.logs()}"
    assert report.accepted == report.success > 0 and report.lost == 0 and report.transport_errors == 0
    # Each failover happened, and the system followed it without a restart: new notifications delivered after it.
    assert report.redis.promoted_s is not None and report.redis.deliveries_resumed_s is not None
    assert report.postgres.promoted_s is not None and report.postgres.deliveries_resumed_s is not None
    # Intake went on answering 202 through Redis's failover; it answered 503 while PostgreSQL had no primary.
    assert report.redis.answers_503 == 0 and report.postgres.answers_503 > 0
