"""Errors the ledger raises to its callers."""

from __future__ import annotations


class LedgerError(Exception):
    """Base of the ledger's errors."""


class LedgerUnavailable(LedgerError):
    """The database cannot be reached or is too busy to answer; nothing was written."""
