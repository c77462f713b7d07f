"""The API process hides its start-up objects from the garbage collector, and only those. Run in a process of its own:
freezing the test runner's objects would change every test after this one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import settings_env
from tests.service.conftest import notification

ROOT = Path(__file__).resolve().parents[2]

# The worker's start as gunicorn runs it (`service.app:create_app_from_env()`), then rounds of a batch and single POSTs.
PROCESS = """
import gc, json, sys
from falcon import testing
from service.app import create_app_from_env

before = gc.get_freeze_count()
client = testing.TestClient(create_app_from_env())
frozen, answers, counts = gc.get_freeze_count(), [], []
for batch, singles in json.loads(sys.argv[1]):
    answers.append(client.simulate_post("/api/notifications/batch", json={"notifications": batch}).status_code)
    answers += [client.simulate_post("/api/notifications", json=body).status_code for body in singles]
    gc.collect()
    counts.append(gc.get_freeze_count())
print(json.dumps({"before": before, "frozen": frozen, "counts": counts, "answers": answers}))
"""


def test_the_api_process_freezes_its_start_up_objects_and_none_made_by_requests(
    postgres_db, redis_server_url, queue_name
):
    rounds = [[[notification() for _ in range(20)], [notification() for _ in range(20)]] for _ in range(3)]
    env = {"PATH": "/usr/bin:/bin", **settings_env(postgres_db, redis_server_url, queue_name)}
    done = subprocess.run(
        [sys.executable, "-c", PROCESS, json.dumps(rounds)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["answers"] == ([200] + [202] * 20) * 3
    assert seen["before"] == 0
    # The modules and the app: tens of thousands of objects.
    assert seen["frozen"] > 10_000
    # None that requests make: the frozen set never grows (it shrinks as start-up objects are freed) and stays the
    # same whatever the number of requests served.
    assert seen["counts"][0] == seen["counts"][-1] <= seen["frozen"]
