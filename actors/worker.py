"""What each Dramatiq worker process runs as it boots (`boot`, which `wjp worker` names to Dramatiq as
`actors.worker:boot`): builds the broker, ledger and channels from the environment and declares the delivery actor.

`wjp worker` imports this module, and with it everything a worker process needs, before Dramatiq forks its
processes: they start with it all imported (bench/README.md, "Workers that start fast"). Nothing here may open a
connection or start a thread at import: that happens in `boot`, in each process."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import dramatiq
from dramatiq.middleware import Middleware

from actors import log_format, tracing
from actors.actor import declare_actor
from actors.broker import Dispatcher, make_broker
from actors.callbacks import CallbackDelivery, declare_callback_actor
from actors.channels import build_channels
from actors.channels.webhook import WebhookChannel
from actors.delivery import Delivery
from actors.observe import ObserveMessages
from actors.settings import Settings, positive_int
from actors.start_up import freeze_start_up_objects
from actors.worker_logging import log_straight_to_stderr, log_without_callers
from ledger.database import Database

#: Most ms an idle consumer waits between polls of Redis (Dramatiq's default is 1000). Messages our senders enqueue
#: wake it at once (actors/broker.py, the queue's bell); this bounds the wait for the others: Dramatiq's retries,
#: and the delay queue's due messages.
IDLE_POLL_MS = 100
#: Delayed messages a worker process holds in memory per thread (Dramatiq's default is 1000): a process that dies
#: strands them until maintenance. A smaller hoard is plenty for retries and keeps that window small.
DELAYED_PER_THREAD = 100


class ConsumerSettings(Middleware):
    """Sets how often the worker's idle consumers poll Redis and how many delayed messages they hold, on the
    Worker as it boots. Dramatiq reads its own variables for these (`dramatiq_worker_timeout`,
    `dramatiq_delay_queue_prefetch`) once, as it is imported, which `wjp worker` does before its processes fork."""

    def __init__(self, env: Mapping[str, str], threads: int) -> None:
        self.idle_poll_ms = positive_int(env, "dramatiq_worker_timeout", IDLE_POLL_MS)
        self.delay_prefetch = positive_int(env, "dramatiq_delay_queue_prefetch", DELAYED_PER_THREAD * threads)

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        worker.worker_timeout = self.idle_poll_ms
        worker.delay_prefetch = self.delay_prefetch


def boot() -> Delivery:
    """Set up this worker process: Dramatiq's broker (the global one, which Dramatiq's worker then runs), the
    ledger sized to its threads, the channels and the delivery actor."""
    settings = Settings.from_env()
    broker = make_broker(settings.redis_url)
    if settings.worker_metrics_port:
        # Dramatiq's exporter: a process beside the workers serving the metrics of every worker process of this
        # host (ours and Dramatiq's own) from the directory and port `wjp worker` put in the environment, which
        # the exporter's module reads as it is imported: here, not before the fork.
        from dramatiq.middleware.prometheus import Prometheus

        broker.add_middleware(Prometheus())
    json_logs = log_format.configure() == "json"
    if tracing.start("wjp-worker") or json_logs:
        broker.add_middleware(ObserveMessages(json_logs=json_logs))
    # A connection per Dramatiq thread (`wjp worker --threads`, which passes the number on), one for transactions
    # (none on the delivery path) and the ledger batcher's kept one; README.md, "Running in production", sums them.
    threads = positive_int(os.environ, "WJP_WORKER_THREADS", 8)
    broker.add_middleware(ConsumerSettings(os.environ, threads))
    dramatiq.set_broker(broker)
    database = Database(
        settings.database_url,
        pool_size=threads,
        transactions=1,
        kept=1,
        prepared_statements=settings.prepared_statements,
    )
    dispatcher = Dispatcher(broker, settings.queue)
    channels = build_channels(settings.channels)
    delivery = Delivery(database=database, dispatcher=dispatcher, channels=channels, settings=settings, threads=threads)
    declare_actor(broker, delivery, settings)
    # Status callbacks go out as webhooks do, with the webhook channel's guard and signing, whichever channels are
    # enabled.
    webhook = channels.get("webhook")
    if not isinstance(webhook, WebhookChannel):
        webhook = WebhookChannel(settings.channels)
    callback_delivery = CallbackDelivery(
        database=database, dispatcher=dispatcher, webhook=webhook, settings=settings, flow=delivery.flow,
        ledger=delivery.ledger, armed=delivery.armed,
    )
    declare_callback_actor(broker, callback_delivery, settings)
    logging.getLogger("wjp").setLevel(logging.INFO)
    log_straight_to_stderr()
    log_without_callers()
    freeze_start_up_objects()
    return delivery
