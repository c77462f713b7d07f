"""`make bench`, sustainable: "today's" sustainable rate measured in the same run, on the same machine — the product as
it was before the API moved to an event loop (the gthread API, `REVISION`), run through this very bench.

The rate of one code on one machine says little about another machine's (2026-12-04: the gthread API carried 464/s
on one VM and 1,354/s on the next), so the issue-22 ratio is only honest when both sides run back to back. The old
tree is `git archive`d into var/bench/, this checkout's bench/ copied over it, and `python -m bench.run` runs its
sustainable phase there as a child (its own database, the same venv and settings). Without git history (a tarball),
or with `BENCH_SUSTAINABLE_REFERENCE=off`, the phase falls back to the fixed rate `BENCH_SUSTAINABLE_TODAY`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from bench.common import DB_NAME, PYTHON, ROOT, bench_env, log

#: The last commit with the gthread API (2026-12-03 16:38); the asyncio API replaced it in the next stop.
REVISION = os.environ.get("BENCH_SUSTAINABLE_REFERENCE", "591e94f")
ENABLED = REVISION.lower() not in ("", "off", "0", "no")


def _tree() -> Path | None:
    tree = ROOT / "var" / "bench" / f"reference-{REVISION}"
    if not (tree / "service").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", REVISION], capture_output=True)
        if archive.returncode != 0:
            log(f"  reference: no git revision {REVISION} here ({archive.stderr.decode().strip()[:120]})")
            shutil.rmtree(tree, ignore_errors=True)
            return None
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    # The bench of this checkout measures the old product, so both sides are judged by one definition of "flat".
    shutil.rmtree(tree / "bench", ignore_errors=True)
    shutil.copytree(ROOT / "bench", tree / "bench", ignore=shutil.ignore_patterns("results", "__pycache__"))
    (tree / "bench" / "results").mkdir(exist_ok=True)
    return tree


def measure() -> dict | None:
    """The reference's sustainable search, run to its end in a child process; None when it cannot run here."""
    if not ENABLED:
        return None
    tree = _tree()
    if tree is None:
        return None
    log(f"  reference: the gthread API of {REVISION}, the same search, in {tree.relative_to(ROOT)}")
    env = bench_env(
        PYTHONPATH=str(tree),
        BENCH_ONLY="sustainable",
        BENCH_SUSTAINABLE_REFERENCE="off",
        BENCH_DB=f"{DB_NAME}_reference",
    )
    env.pop("BENCH_SUSTAINABLE_RATES", None)
    with open(ROOT / "var" / "bench" / "reference.log", "w") as out:
        done = subprocess.run([PYTHON, "-m", "bench.run"], cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        log(f"  reference: its run failed (exit {done.returncode}, var/bench/reference.log)")
        return None
    details = json.loads((tree / "bench" / "results" / "latest.json").read_text())["details"]["sustainable"]
    rate = details.get("sustainable_rate")
    log(f"  reference: sustainable rate {rate}/s")
    half = details.get("at_half") or {}
    trials = [{"rate": t.get("rate"), "flat": t.get("flat")} for t in details.get("trials", [])]
    return {"revision": REVISION, "rate": rate, "half_p99_ms": half.get("p99_ms"), "trials": trials}
