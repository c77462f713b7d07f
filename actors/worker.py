"""What each Dramatiq worker process imports: builds the broker, ledger and channels from the environment
and declares the delivery actor. Run through `wjp worker`, which validates the settings first."""

from __future__ import annotations

import logging
import os

import dramatiq

from actors import log_format, tracing
from actors.actor import declare_actor
from actors.broker import Dispatcher, make_broker
from actors.callbacks import CallbackDelivery, declare_callback_actor
from actors.channels import build_channels
from actors.channels.webhook import WebhookChannel
from actors.delivery import Delivery
from actors.observe import ObserveMessages
from actors.settings import Settings, positive_int
from actors.worker_logging import log_straight_to_stderr
from ledger.database import Database

settings = Settings.from_env()
broker = make_broker(settings.redis_url)
if settings.worker_metrics_port:
    # Dramatiq's exporter: a process beside the workers serving the metrics of every worker process of this
    # host (ours and Dramatiq's own) from the directory and port `wjp worker` put in the environment.
    from dramatiq.middleware.prometheus import Prometheus

    broker.add_middleware(Prometheus())
json_logs = log_format.configure() == "json"
if tracing.start("wjp-worker") or json_logs:
    broker.add_middleware(ObserveMessages(json_logs=json_logs))
dramatiq.set_broker(broker)
# A connection per Dramatiq thread (`wjp worker --threads`, which passes the number on), one for transactions (none
# on the delivery path) and the ledger batcher's kept one; README.md, "Running in production", sums them up.
threads = positive_int(os.environ, "WJP_WORKER_THREADS", 8)
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
deliver = declare_actor(broker, delivery, settings)
# Status callbacks go out as webhooks do, with the webhook channel's guard and signing, whichever channels are enabled.
webhook = channels.get("webhook")
if not isinstance(webhook, WebhookChannel):
    webhook = WebhookChannel(settings.channels)
callback_delivery = CallbackDelivery(
    database=database, dispatcher=dispatcher, webhook=webhook, settings=settings, flow=delivery.flow
)
deliver_callback = declare_callback_actor(broker, callback_delivery, settings)
logging.getLogger("wjp").setLevel(logging.INFO)
log_straight_to_stderr()
