"""Producer API keys: made and shown once, stored only as a SHA-256 digest, looked up by that digest."""

from __future__ import annotations

import hashlib
import math
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from ledger.errors import LedgerError
from ledger.ids import uuid7
from ledger.schema import api_keys

#: Every key starts with this, so a leaked one is easy to recognise (secret scanners, log reviews).
PREFIX = "wjp_"
#: Random bytes per key: 256 bits, far beyond guessing.
KEY_BYTES = 32


class KeyNameTaken(LedgerError):
    """A key with this name exists (or existed: a revoked key keeps its name)."""


@dataclass(frozen=True)
class ApiKey:
    #: Also the scope of every job the key creates.
    id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None
    #: Notifications per second; None: the API's default.
    rate: float | None = None


@dataclass(frozen=True)
class Producer:
    """What a request made with an active key is allowed: its scope and its rate (None: the API's default)."""

    scope: str
    rate: float | None


def _checked(rate: float | None) -> float | None:
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        raise ValueError("a key's rate is a number of notifications per second above 0, or None")
    return rate


def digest(key: str) -> str:
    """The stored form of a key. A fast hash is right here: a key carries 256 random bits, so there is no
    dictionary to try; slow password hashes (bcrypt, argon2) guard low-entropy secrets, and would cost
    every API request milliseconds for nothing."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def create(conn: Connection, name: str, *, now: datetime, rate: float | None = None) -> tuple[ApiKey, str]:
    """Record a new key named `name` (limited to `rate` notifications per second, None: the API's default);
    return it and the secret, which exists nowhere else from now on."""
    secret = PREFIX + secrets.token_urlsafe(KEY_BYTES)
    key = ApiKey(id=str(uuid7()), name=name, created_at=now, revoked_at=None, rate=_checked(rate))
    try:
        conn.execute(
            insert(api_keys).values(
                id=key.id, name=name, key_hash=digest(secret), created_at=now, revoked_at=None, rate=key.rate
            )
        )
    except IntegrityError:
        raise KeyNameTaken(f"an API key named {name!r} already exists") from None
    return key, secret


def list_keys(conn: Connection) -> list[ApiKey]:
    """Every key, revoked ones included, oldest first."""
    columns = (api_keys.c.id, api_keys.c.name, api_keys.c.created_at, api_keys.c.revoked_at, api_keys.c.rate)
    rows = conn.execute(select(*columns).order_by(api_keys.c.created_at, api_keys.c.id)).all()
    return [ApiKey(*row) for row in rows]


def revoke(conn: Connection, name: str, *, now: datetime) -> bool:
    """Stop the key named `name` from working; False when no such key is active."""
    result = conn.execute(
        update(api_keys).where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None)).values(revoked_at=now)
    )
    return result.rowcount == 1


def set_rate(conn: Connection, name: str, rate: float | None) -> bool:
    """Limit the active key named `name` to `rate` notifications per second (None: the API's default); False
    when no such key is active."""
    result = conn.execute(
        update(api_keys).where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None)).values(rate=_checked(rate))
    )
    return result.rowcount == 1


def producer_of(conn: Connection, key: str) -> Producer | None:
    """The scope (key id) and rate of an active key, or None. One lookup on the unique index of digests; comparing
    digests in the index leaks nothing useful, since a digest's prefix says nothing about the key."""
    row = conn.execute(
        select(api_keys.c.id, api_keys.c.rate).where(
            api_keys.c.key_hash == digest(key), api_keys.c.revoked_at.is_(None)
        )
    ).first()
    return None if row is None else Producer(scope=row.id, rate=row.rate)


def any_exist(conn: Connection) -> bool:
    """Whether a key was ever created. Revoked keys count: revoking every key must not reopen the API."""
    return conn.execute(select(api_keys.c.id).limit(1)).first() is not None


def scopes(conn: Connection) -> list[str]:
    """Every scope a job can have: no key ('') and each key's id."""
    return ["", *conn.execute(select(api_keys.c.id)).scalars()]
