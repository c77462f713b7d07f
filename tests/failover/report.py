"""What a failover drill is asked to do (`DrillConfig`) and what it found (`DrillReport`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.drills import Findings


@dataclass(frozen=True)
class DrillConfig:
    #: Seconds of traffic; the Redis master is killed at a third of it, the PostgreSQL primary at two thirds.
    seconds: float = 60.0
    #: POSTs per second, every notification posted twice with its key (the second a replay, answered 200).
    rate: float = 100.0
    producer_threads: int = 8
    api_workers: int = 2
    worker_threads: int = 8
    #: Seconds between the kill of the PostgreSQL primary and the promotion of its standby: a failover tool's
    #: detection (Patroni, a managed service) takes a few.
    promote_after: float = 2.0
    drain_timeout: float = 180.0


@dataclass
class Failover:
    """One fault and how long the system took to heal from it, in seconds after the kill."""

    fault: str
    at_s: float = 0.0
    #: Until the standby was promoted (PostgreSQL) or the Sentinels named the new master (Redis).
    promoted_s: float | None = None
    #: Until the end of the last 503 answer (0: intake never refused).
    intake_healed_s: float | None = None
    #: Until the first delivery of a notification accepted once the new primary or master was in place.
    deliveries_resumed_s: float | None = None
    #: 503 answers to requests started in this fault's window, and from the first one's start to the last's end.
    answers_503: int = 0
    intake_503_seconds: float = 0.0


@dataclass
class DrillReport(Findings):
    accepted: int = 0
    success: int = 0
    lost: int = 0
    deliveries: int = 0
    #: Deliveries beyond each notification's first: at-least-once allows them, the drill counts them.
    duplicates: int = 0
    status_codes: dict[str, int] = field(default_factory=dict)
    answers_503: int = 0
    #: From the start of the first 503 to the end of the last one.
    intake_503_seconds: float = 0.0
    transport_errors: int = 0
    redis: Failover = field(default_factory=lambda: Failover("kill -9 the Redis master; Sentinels promote the replica"))
    postgres: Failover = field(
        default_factory=lambda: Failover("kill -9 the PostgreSQL primary; its synchronous standby promoted")
    )
    submit_seconds: float = 0.0
    drain_seconds: float = 0.0
    wall_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
