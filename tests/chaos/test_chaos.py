"""The reduced chaos run that `make test` includes: 300 notifications submitted twice each while workers are
killed with `kill -9` mid-delivery, Redis is flushed and restarted, and PostgreSQL restarted. `make chaos` runs
2,000."""

from __future__ import annotations

import pytest

from tests.chaos.report import ChaosConfig
from tests.chaos.scenario import ChaosRun
from tests.chaos.servers import missing_servers
from tests.conftest import unavailable


@pytest.mark.slow
@pytest.mark.xdist_group("fault-drills")
def test_no_accepted_notification_is_lost_or_delivered_twice_by_the_system_through_kills_and_restarts(tmp_path):
    reason = missing_servers()
    if reason:
        unavailable(reason)
    run = ChaosRun(ChaosConfig(jobs=300, spread=30.0), tmp_path)

    report = run.run()

    assert report.ok, f"{report.to_json()}\n{run.system.logs()}"
    assert report.accepted == report.success == report.distinct_webhook_ids == 300
    assert report.stats["success"] == 300
    assert report.lost == 0 and report.unexpected_5xx == 0 and report.attempts_delivered_twice == 0
    assert report.transport_errors == 0
    # Each fault had its effect: both kills cut deliveries short, FLUSHALL deleted what the reconciler then repaired.
    assert report.kills == report.kills_mid_delivery == 2
    assert report.deliveries_cut_by_kills >= 2 and report.duplicates <= report.deliveries_cut_by_kills
    assert report.flushed_waiting_jobs > 0 and report.flushed_jobs_redispatched > 0
    assert report.reconciler_redispatched_after_flush > 0
