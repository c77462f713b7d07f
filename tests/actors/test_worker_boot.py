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


def test_a_booted_worker_process_keeps_its_start_up_objects_out_of_full_collections(
    postgres_server_url, redis_server_url
):
    # A full collection walks every tracked object, with every thread of the process stopped meanwhile: the
    # imports, broker, ledger and channels are most of them, and live as long as the process.
    booted = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env={**os.environ, "DATABASE_URL": postgres_server_url, "REDIS_URL": redis_server_url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert booted.returncode == 0, booted.stderr
    counts = json.loads(booted.stdout.splitlines()[-1])
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
    # No format of ours shows the caller, and finding it walks the stack for each of a job's log lines.
    booted = subprocess.run(
        [sys.executable, "-c", _LOGGING_PROBE],
        env={**os.environ, "DATABASE_URL": postgres_server_url, "REDIS_URL": redis_server_url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert booted.returncode == 0, booted.stderr
    assert json.loads(booted.stdout.splitlines()[-1]) == {"line": 0}  # unknown: not looked up
