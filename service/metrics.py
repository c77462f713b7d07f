"""GET /metrics: the API's intake counters, other processes' metrics, and ledger gauges read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

import falcon
from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector

from actors.broker import BrokerUnavailable
from actors.flow.overview import Destinations
from ledger import queries
from ledger.database import Database
from ledger.errors import LedgerUnavailable
from ledger.timestamps import utcnow

INTAKE_OUTCOMES = ("created", "replayed", "mismatch", "invalid")
INTAKE = Counter(
    "wjp_intake",
    "POST /api/notifications by outcome: created, replayed (same key and payload), mismatch (same key, other "
    "payload) and invalid (refused before the ledger: bad JSON, validation, size or media type).",
    ["outcome"],
)


def count_intake(outcome: str, count: int = 1) -> None:
    INTAKE.labels(outcome).inc(count)


class LedgerCollector:
    """Gauges read from the ledger at each scrape. `queue_stats` is one statement whose cost does not grow
    with the ledger, so scraping stays cheap on millions of rows."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("wjp_ledger_up", "1 when the ledger answered this scrape, 0 when it could not.")
        try:
            stats = self.database.run(lambda conn: queries.queue_stats(conn, now=utcnow()))
        except LedgerUnavailable:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("wjp_jobs", "Jobs in the ledger by status.", labels=["status"])
        for status, count in stats.counts.items():
            jobs.add_metric([status.value.lower()], count)
        yield jobs
        yield GaugeMetricFamily(
            "wjp_oldest_due_job_age_seconds",
            "How long the oldest due PENDING or RETRY job has been due (0 when none is): work waiting for a worker.",
            value=stats.oldest_due_age,
        )
        yield GaugeMetricFamily(
            "wjp_success_attempts_mean", "Mean attempts of the SUCCESS jobs.", value=stats.avg_attempts_success
        )


class DestinationsCollector:
    """The destinations' circuits, read from Redis at each scrape: the same for every API process, so computed here
    rather than counted by the workers (where each process would hold a part of it)."""

    def __init__(self, destinations: Destinations) -> None:
        self.destinations = destinations

    def collect(self) -> Iterator[Metric]:
        try:
            count = self.destinations.open_circuits()
        except BrokerUnavailable:
            return  # Redis unreachable: no value rather than a wrong one (/readyz says what is down).
        yield GaugeMetricFamily(
            "wjp_destinations_open_circuits",
            "Destinations whose circuit is open or half-open: their jobs are deferred, at most one probe goes out.",
            value=count,
        )


class Metrics:
    """GET /metrics, in the Prometheus text format."""

    def __init__(self, database: Database, multiprocess_dir: str | None, destinations: Destinations) -> None:
        # Every outcome exists from the start, so rate() and alerts see a zero rather than no series at all.
        # (Here, not at import: in multiprocess mode the first value opens this process's file.)
        for outcome in INTAKE_OUTCOMES:
            INTAKE.labels(outcome)
        self._registry = CollectorRegistry()
        if multiprocess_dir:
            # Every process of this host that shares the directory: the other API workers, and the Dramatiq
            # workers and reconciler when they were given the same directory (as `wjp dev` does).
            MultiProcessCollector(self._registry, path=multiprocess_dir)
        else:
            self._registry.register(REGISTRY)
        self._registry.register(LedgerCollector(database))
        self._registry.register(DestinationsCollector(destinations))

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = CONTENT_TYPE_PLAIN_0_0_4
        resp.data = generate_latest(self._registry)
