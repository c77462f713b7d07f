"""Seeding the bench ledger fast: INSERT … SELECT generate_series with the row triggers off, then the status
counters recomputed in one statement, so `GET /internal/queue/stats` stays exact.

The history is finished jobs (97 % SUCCESS, 1.5 % FAILED, 1.5 % CANCELLED), in creation order (UUIDv7-shaped
ids, zero-padded keys: every index grows at its right edge, as in production). The live set does not grow
with the history: 2,000 PENDING jobs scheduled for tomorrow and 500 RETRY jobs due in an hour, neither of
them a reconciler candidate. Attempt rows are not seeded (no query measured here reads them).
"""

from __future__ import annotations

import time

import psycopg

MESSAGE = (
    "Hello, this is a notification body of roughly one hundred and sixty characters used for the maintenance "
    "benchmark; it is padded to be realistic....."
)

_HISTORY = """
INSERT INTO jobs (id, scope, idempotency_key, payload_hash, recipient, channel, message, subject, metadata,
                  send_at, status, attempts, max_attempts, next_attempt_at, dispatch_seq, claimed_at, worker,
                  last_outcome, last_error, created_at, updated_at, completed_at)
SELECT (lpad(to_hex((extract(epoch FROM t.created) * 1000)::bigint), 12, '0') || '7'
        || lpad(to_hex(g %% 4096), 3, '0') || '8' || lpad(to_hex(g), 15, '0'))::uuid,
       '', 'seed-' || lpad(g::text, 10, '0'), md5(g::text) || md5(g::text),
       'user' || g || '@example.com', (ARRAY['email', 'webhook', 'log', 'sms'])[1 + g %% 4], %(message)s,
       NULL, NULL, NULL, s.status,
       s.attempts, 5, t.created, greatest(s.attempts, 1), NULL, 'seed:1',
       CASE s.status WHEN 'SUCCESS' THEN 'success' WHEN 'FAILED' THEN 'permanent_error' END,
       CASE s.status WHEN 'FAILED' THEN 'HTTP 410: gone' END,
       t.created, t.created + interval '1 second', t.created + interval '1 second'
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
CROSS JOIN LATERAL (SELECT timestamptz '2026-09-01 00:00:00+00' + g * interval '1 second' AS created) AS t
CROSS JOIN LATERAL (
    SELECT CASE WHEN (g * 7919) %% 1000 < 970 THEN 'SUCCESS'
                WHEN (g * 7919) %% 1000 < 985 THEN 'FAILED' ELSE 'CANCELLED' END AS status,
           CASE WHEN (g * 7919) %% 1000 < 970 THEN 1 + (g %% 10 = 0)::int
                WHEN (g * 7919) %% 1000 < 985 THEN 5 ELSE 0 END AS attempts
) AS s
"""

_LIVE = """
INSERT INTO jobs (id, scope, idempotency_key, payload_hash, recipient, channel, message, status, attempts,
                  max_attempts, next_attempt_at, send_at, dispatch_seq, created_at, updated_at)
SELECT gen_random_uuid(), '', 'live-' || g, md5(g::text) || md5(g::text), 'user' || g || '@example.com', 'log',
       %(message)s, CASE WHEN g <= 2000 THEN 'PENDING' ELSE 'RETRY' END, CASE WHEN g <= 2000 THEN 0 ELSE 1 END, 5,
       CASE WHEN g <= 2000 THEN now() + interval '1 day' ELSE now() + interval '1 hour' END,
       CASE WHEN g <= 2000 THEN now() + interval '1 day' END,
       CASE WHEN g <= 2000 THEN 0 ELSE 1 END, now(), now()
FROM generate_series(1, 2500) AS g
"""

_RECOUNT = """
UPDATE job_counts SET success = c.success, failed = c.failed, cancelled = c.cancelled,
                      success_attempts = c.success_attempts
FROM (SELECT count(*) FILTER (WHERE status = 'SUCCESS') AS success,
             count(*) FILTER (WHERE status = 'FAILED') AS failed,
             count(*) FILTER (WHERE status = 'CANCELLED') AS cancelled,
             coalesce(sum(attempts) FILTER (WHERE status = 'SUCCESS'), 0) AS success_attempts
      FROM jobs) AS c
WHERE slot = 0;
UPDATE job_counts SET success = 0, failed = 0, cancelled = 0, success_attempts = 0 WHERE slot <> 0;
"""

CHUNK = 1_000_000


def history_rows(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM jobs WHERE idempotency_key LIKE 'seed-%'").fetchone()[0]


def grow_to(conn: psycopg.Connection, total: int) -> dict:
    """Add history rows until the ledger holds `total` of them (plus the fixed live set); return timings."""
    started = time.perf_counter()
    have = history_rows(conn)
    conn.execute("SET session_replication_role = replica")  # row triggers off for the bulk load
    first = have + 1
    while first <= total:
        last = min(total, first + CHUNK - 1)
        conn.execute(_HISTORY, {"first": first, "last": last, "message": MESSAGE})
        first = last + 1
    conn.execute("SET session_replication_role = origin")
    if not conn.execute("SELECT 1 FROM jobs WHERE idempotency_key = 'live-1'").fetchone():
        conn.execute(_LIVE, {"message": MESSAGE})  # with the triggers on, like any intake
    loaded = time.perf_counter()
    with conn.transaction():
        conn.execute(_RECOUNT)
    conn.execute("VACUUM (ANALYZE) jobs")
    done = time.perf_counter()
    size = conn.execute("SELECT pg_table_size('jobs'), pg_indexes_size('jobs'), (SELECT count(*) FROM jobs)").fetchone()
    return {
        "rows": int(size[2]),
        "insert_s": round(loaded - started, 1),
        "recount_vacuum_s": round(done - loaded, 1),
        "heap_mb": round(size[0] / 2**20),
        "indexes_mb": round(size[1] / 2**20),
    }


def add_candidates(conn: psycopg.Connection, n: int) -> None:
    """`n` PENDING jobs dispatched (seq 1) and overdue by a minute, whose message is not in Redis."""
    conn.execute(
        """
        INSERT INTO jobs (id, scope, idempotency_key, payload_hash, recipient, channel, message, status, attempts,
                          max_attempts, next_attempt_at, dispatch_seq, created_at, updated_at)
        SELECT gen_random_uuid(), '', 'cand-' || g, md5(g::text) || md5(g::text), 'user' || g || '@example.com',
               'log', %(message)s, 'PENDING', 0, 5, now() - interval '60 seconds', 1,
               now() - interval '60 seconds', now() - interval '60 seconds'
        FROM generate_series(1, %(n)s) AS g
        """,
        {"n": n, "message": MESSAGE},
    )
    conn.execute("ANALYZE jobs")


def remove_candidates(conn: psycopg.Connection) -> None:
    conn.execute("DELETE FROM jobs WHERE idempotency_key LIKE 'cand-%'")
