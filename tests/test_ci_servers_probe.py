"""Probes for test_ci_servers.py: one test per server fixture, run only by it (WJP_PROBE set)."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.skipif("WJP_PROBE" not in os.environ, reason="run by tests/test_ci_servers.py")


def test_a_test_that_needs_postgresql(postgres_db):
    assert postgres_db is not None


def test_a_test_that_needs_redis(redis_server_url):
    assert redis_server_url
