"""The Dramatiq actor around `Delivery`: which failures Dramatiq itself retries, and the middleware that writes a
stopping worker's held successes before it exits."""

from __future__ import annotations

import logging

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage, Middleware

from actors.broker import ACTOR_NAME, DEST_OPTION, RID_OPTION
from actors.delivery import AHEAD_RECHECKS, Delivery, SequenceAhead
from actors.settings import Settings
from ledger.errors import LedgerUnavailable

log = logging.getLogger("wjp.worker")


def _retry_when(retries: int, exception: BaseException) -> bool:
    # Besides a message ahead of the ledger (a few looks), only an unreachable ledger is worth Dramatiq's own retry:
    # the claim never happened, so the message must come back. Anything else is a bug, and the reconciler owns the
    # job's fate.
    if isinstance(exception, SequenceAhead):
        return retries < AHEAD_RECHECKS
    return isinstance(exception, LedgerUnavailable)


class _WriteSuccessesBeforeExit(Middleware):
    """A worker that stops (SIGTERM, `Worker.stop`) writes the successes its threads left to the batcher first,
    then closes its channels' connections."""

    def __init__(self, delivery: Delivery, timeout: float) -> None:
        self.delivery = delivery
        self.timeout = timeout

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if not self.delivery.flush(self.timeout):
            log.error("stopping with successes not yet written; the reconciler will attempt those jobs again")
        self.delivery.close_channels()


def declare_actor(broker: RedisBroker, delivery: Delivery, settings: Settings) -> dramatiq.Actor:
    """Register the delivery actor on `broker` for the configured queue."""
    # Beyond the attempt's time limit, `_write` gives up on an unreachable ledger anyway.
    broker.add_middleware(_WriteSuccessesBeforeExit(delivery, settings.attempt_time_limit + 5))
    broker.add_middleware(delivery.claims_coming)

    def deliver(job_id: str) -> None:
        message = CurrentMessage.get_current_message()
        options = message.options if message else {}
        delivery(job_id, options.get(RID_OPTION, ""), options.get(DEST_OPTION, ""))

    return dramatiq.actor(
        deliver,
        broker=broker,
        actor_name=ACTOR_NAME,
        queue_name=settings.queue,
        retry_when=_retry_when,
        min_backoff=500,
        max_backoff=30_000,
        time_limit=int(settings.attempt_time_limit * 1000),
    )
