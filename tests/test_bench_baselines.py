"""The intake phase's baseline apps load as gunicorn loads them, whatever the product's gunicorn config holds now."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["bench.baseline_app", "bench.baseline_asgi"])
def test_a_baseline_app_imports_in_a_fresh_process(module: str) -> None:
    if module == "bench.baseline_asgi":
        pytest.importorskip("psycopg_pool", reason="a dependency of `make bench` (its extra), not of `make test`")
    # Nothing connects at import: the URLs need not lead anywhere.
    env = {**os.environ, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "REDIS_URL": "redis://127.0.0.1:1/0"}
    done = subprocess.run([sys.executable, "-c", f"import {module}"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
