"""What a chaos run is asked to do (`ChaosConfig`), what it did to the system (`Kill`, `Flush`), and what it found
(`Report`: the figures and every broken invariant)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.drills import Findings


@dataclass(frozen=True)
class ChaosConfig:
    jobs: int = 300
    producer_threads: int = 6
    #: Seconds over which the submissions are spread, so that every fault lands amid traffic.
    spread: float = 30.0
    api_workers: int = 2
    worker_threads: int = 8
    sink_think: float = 0.02
    #: Seconds for every accepted job to reach SUCCESS once the producers are done.
    drain_timeout: float = 300.0
    #: Seconds PostgreSQL stays down in its restart (0: `pg_ctl restart`, as quick as it goes).
    postgres_down: float = 0.0
    #: Seconds redis-server stays down in its restart: long enough for every client to notice.
    redis_down: float = 2.0


@dataclass
class Kill:
    worker: str
    pids: list[int]
    at: float
    #: The (job id, attempt) of each delivery of this worker the sink held unanswered while it was killed.
    held: list[tuple[str, int]]


@dataclass
class Flush:
    """What FLUSHALL deleted: the message ids (job, dispatch seq) in Redis at that instant, and those of jobs that
    were waiting in the ledger (unless a worker had fetched it already, the reconciler must send another)."""

    deleted: set[tuple[uuid.UUID, int]]
    waiting: set[tuple[uuid.UUID, int]]
    #: Where the reconciler's output stood at the flush: its pass reports after it are the repair.
    reconciler_log_offset: int


@dataclass
class Report(Findings):
    jobs_requested: int = 0
    accepted: int = 0
    success: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    distinct_webhook_ids: int = 0
    deliveries: int = 0
    duplicates: int = 0
    attempts_delivered_twice: int = 0
    kills: int = 0
    #: Kills that cut short at least one delivery (the sink got it, the ledger never heard how it ended).
    kills_mid_delivery: int = 0
    #: Per kill: the worker, when, the deliveries of it the sink held, and how many of them the reconciler closed.
    kill_details: list[dict[str, Any]] = field(default_factory=list)
    deliveries_cut_by_kills: int = 0
    #: Dramatiq messages FLUSHALL deleted, those of jobs waiting in the ledger, and how many of the latter got a
    #: new dispatch (see `check_flush`).
    flushed_messages: int = 0
    flushed_waiting_jobs: int = 0
    flushed_jobs_redispatched: int = 0
    #: The sum of `redispatched` over the reconciler's passes after the flush.
    reconciler_redispatched_after_flush: int = 0
    lost: int = 0
    status_codes: dict[str, int] = field(default_factory=dict)
    unexpected_5xx: int = 0
    #: Producer exchanges that got no HTTP answer (refused, reset, timed out): never expected, see `check_answers`.
    transport_errors: int = 0
    faults: list[dict[str, Any]] = field(default_factory=list)
    submit_seconds: float = 0.0
    drain_seconds: float = 0.0
    wall_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
