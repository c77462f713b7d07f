"""The threaded intake baseline app loads as gunicorn loads it, whatever the product's gunicorn config holds now.
(The asyncio one needs psycopg_pool, a dependency of `make bench`'s extra that `make test` does not install.)"""

from __future__ import annotations

import os
import subprocess
import sys


def test_the_threaded_baseline_app_imports_in_a_fresh_process() -> None:
    # Nothing connects at import: the URLs need not lead anywhere.
    env = {**os.environ, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "REDIS_URL": "redis://127.0.0.1:1/0"}
    done = subprocess.run([sys.executable, "-c", "import bench.baseline_app"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
