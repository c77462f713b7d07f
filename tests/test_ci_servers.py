"""Tests that need PostgreSQL or Redis skip with a reason when those are absent, but fail under CI=true."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def run_probes_against_absent_servers(ci: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(
        CI=ci,
        WJP_PROBE="1",
        WJP_TEST_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
        WJP_TEST_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
    )
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_ci_servers_probe.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_the_servers_the_tests_skip_with_a_reason():
    result = run_probes_against_absent_servers("false")
    assert result.returncode == 0, result.stdout
    assert "2 skipped" in result.stdout
    assert "PostgreSQL at" in result.stdout and "Redis at" in result.stdout


def test_under_ci_the_same_tests_fail_instead_of_skipping():
    result = run_probes_against_absent_servers("true")
    assert result.returncode != 0
    assert "2 failed" in result.stdout or "2 errors" in result.stdout
    assert "CI=true and PostgreSQL" in result.stdout and "CI=true and Redis" in result.stdout
