"""The reduced chaos run that `make test` includes: 300 notifications submitted twice each while workers are
killed with `kill -9`, Redis is flushed and restarted, and PostgreSQL restarted. `make chaos` runs 2,000."""

from __future__ import annotations

import pytest

from tests.chaos.scenario import ChaosConfig, ChaosRun
from tests.chaos.servers import missing_servers
from tests.conftest import unavailable


@pytest.mark.slow
def test_no_accepted_notification_is_lost_or_delivered_twice_by_the_system_through_kills_and_restarts(tmp_path):
    reason = missing_servers()
    if reason:
        unavailable(reason)
    run = ChaosRun(ChaosConfig(jobs=300, spread=30.0), tmp_path)

    report = run.run()

    assert report.ok, f"{report.to_json()}\n{run.logs()}"
    assert report.accepted == report.success == report.distinct_webhook_ids == 300
    assert report.stats["success"] == 300
    assert report.lost == 0 and report.unexpected_5xx == 0 and report.attempts_delivered_twice == 0
    assert report.kills == 2
    assert report.duplicates <= report.deliveries_cut_by_kills
