"""A probe for test_ci_servers.py: a whole module that skips at import, as one needing a missing library does."""

from __future__ import annotations

import pytest

pytest.importorskip("wjp_probe_missing_module")


def test_never_collected():
    raise AssertionError("the module skipped at import")
