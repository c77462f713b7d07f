"""Tests that need something from the machine (PostgreSQL, Redis, a tool, a browser, an IPv6 loopback) skip with a
reason when it is absent, but fail under CI=true, however the skip is raised."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
PROBES = ("tests/ci_probes.py", "tests/ci_probe_module.py")
#: Each probe's reason for skipping: the servers withheld, the tool, and the reasons written in the probes.
REASONS = (
    "PostgreSQL at",
    "Redis at",
    "the wjp-probe-tool command is not installed",
    "no IPv6 loopback on this machine (probe)",
    "no browser on this machine (probe)",
    "could not import 'wjp_probe_missing_library'",
    "could not import 'wjp_probe_missing_module'",
)


#: A module that fails at collection stops a run before its tests; here both probes are to be seen.
COLLECT_ALL = ("--continue-on-collection-errors",)


def run_probes_without_what_they_need(ci: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(
        CI=ci,
        WJP_TEST_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
        WJP_TEST_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
    )
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *COLLECT_ALL, *PROBES],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def summary(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """The counts of pytest's last line, by singular word: {"skipped": 7} or {"failed": 3, "error": 4}."""
    last = result.stdout.strip().splitlines()[-1]
    return {word.removesuffix("s"): int(n) for n, word in re.findall(r"(\d+) (failed|passed|skipped|errors?)", last)}


def test_without_what_they_need_the_tests_skip_with_a_reason():
    result = run_probes_without_what_they_need("false")

    assert result.returncode == 0, result.stdout
    assert summary(result) == {"skipped": len(REASONS)}, result.stdout
    for reason in REASONS:
        assert reason in result.stdout, reason


def test_under_ci_every_one_of_those_skips_fails_instead_and_says_why():
    result = run_probes_without_what_they_need("true")

    assert result.returncode != 0
    counts = summary(result)
    assert "skipped" not in counts and "passed" not in counts, result.stdout
    assert counts.get("failed", 0) + counts.get("error", 0) == len(REASONS), result.stdout
    for reason in REASONS:
        assert f"CI=true and {reason}" in result.stdout, reason
