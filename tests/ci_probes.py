"""Probes for test_ci_servers.py, run only by it (the name keeps pytest from collecting them otherwise): each needs
something from the machine that the run withholds, and misses it in one of the ways a test can skip."""

from __future__ import annotations

import pytest

from tests.conftest import unavailable


def test_a_test_that_needs_postgresql(postgres_db):
    assert postgres_db is not None


def test_a_test_that_needs_redis(redis_server_url):
    assert redis_server_url


def test_a_test_that_needs_a_tool_the_machine_lacks():
    unavailable("the wjp-probe-tool command is not installed")


def test_a_test_that_skips_by_itself():
    pytest.skip("no IPv6 loopback on this machine (probe)")


@pytest.mark.skipif(True, reason="no browser on this machine (probe)")
def test_a_test_skipped_by_a_mark():
    raise AssertionError("skipped before it runs")


def test_a_test_whose_library_is_missing():
    pytest.importorskip("wjp_probe_missing_library")
