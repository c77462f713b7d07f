"""What a Dramatiq worker process holds once booted (`actors.worker.boot`), in a process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Boots a worker process as Dramatiq would, then says how many objects the collector still walks in a full
#: collection and how many it no longer looks at.
_PROBE = """
import gc, json
import actors.worker as w
w.boot()
print(json.dumps({"frozen": gc.get_freeze_count(), "tracked": len(gc.get_objects())}))
"""


def booted_worker_says(probe: str, postgres_url: str, redis_url: str) -> dict:
    """What `probe`, run in a new process against the test's ledger and Redis, printed last (as JSON)."""
    booted = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "DATABASE_URL": postgres_url, "REDIS_URL": redis_url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert booted.returncode == 0, booted.stderr
    return json.loads(booted.stdout.splitlines()[-1])


def test_a_booted_worker_process_keeps_its_start_up_objects_out_of_full_collections(
    postgres_server_url, redis_server_url
):
    # A full collection walks every tracked object, with every thread of the process stopped meanwhile: the
    # imports, broker, ledger and channels are most of them, and live as long as the process.
    counts = booted_worker_says(_PROBE, postgres_server_url, redis_server_url)
    assert counts["frozen"] > 10 * counts["tracked"], counts


_LOGGING_PROBE = """
import json, logging
import actors.worker as w
w.boot()
records = []
handler = logging.Handler()
handler.emit = records.append
logging.getLogger().addHandler(handler)
logging.getLogger("wjp.probe").warning("a line")
print(json.dumps({"line": records[0].lineno}))
"""


def test_a_booted_worker_process_logs_without_looking_up_where_each_line_came_from(
    postgres_server_url, redis_server_url
):
    # No format of ours shows the caller, and finding it walks the stack for each of a job's log lines. Line 0:
    # unknown, not looked up.
    assert booted_worker_says(_LOGGING_PROBE, postgres_server_url, redis_server_url) == {"line": 0}
