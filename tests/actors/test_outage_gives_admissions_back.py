"""A ledger batch whose claims meet a ledger outage gives back what their admissions took: the process's share of
the destination and the gate's leases. Before, the batch raised past them: a destination whose claims failed once
kept leaked attempts "in flight" in that process for good, and (their age passing the slow mark) every later message
of it was parked there — the failover drill's stalled worker, found under load."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy.engine import make_url

from actors.broker import Dispatcher, make_broker
from actors.delivery import Delivery
from actors.flow.shares import KNOWN_AFTER, SLOW_ATTEMPT
from ledger.database import Database
from ledger.errors import LedgerUnavailable
from ledger.states import Status
from tests.actors.conftest import submit, wait_for_status
from tests.actors.test_delivery_paths import ScriptedChannel
from tests.flow_checks import gate_of
from tests.tcp_proxy import tcp_proxy


def test_claims_that_meet_a_ledger_outage_give_their_share_and_lease_back(
    make_settings, postgres_db, redis_server_url, queue_name
):
    settings = make_settings(WJP_DESTINATION_CONCURRENCY="2")
    dispatcher = Dispatcher(make_broker(redis_server_url), queue_name)
    destination = f"log:outage-{uuid.uuid4().hex[:8]}"
    channel = ScriptedChannel(lambda notification: "ok")
    host_url = make_url(postgres_db.engine.url.render_as_string(hide_password=False))

    def job() -> uuid.UUID:
        return submit(postgres_db, None, settings, destination=destination)

    with tcp_proxy(host_url.host or "127.0.0.1", host_url.port or 5432) as proxy, gate_of(
        redis_server_url, queue_name
    ) as (gate, used):
        used.append(destination)
        proxied = Database(host_url.set(port=proxy.port).render_as_string(hide_password=False), pool_size=4)
        delivery = Delivery(
            database=proxied, dispatcher=dispatcher, channels={"log": channel}, settings=settings, threads=8
        )
        # Known to this process as a destination that answers fast.
        for known in [job() for _ in range(KNOWN_AFTER)]:
            delivery(str(known), f"{known}.1", destination)
        assert delivery.flush(timeout=10)

        unlucky = job()
        proxy.cut()
        with pytest.raises(LedgerUnavailable):
            delivery(str(unlucky), f"{unlucky}.1", destination)
        proxy.restore()
        time.sleep(2 * SLOW_ATTEMPT)  # what a leaked attempt would have "run" by now
        after = job()
        delivery(str(after), f"{after}.1", destination)
        assert delivery.flush(timeout=10)
        in_flight = gate.inspect([destination])[0].in_flight
        proxied.dispose()

    assert wait_for_status(postgres_db, after, timeout=5).status is Status.SUCCESS, "not parked behind a leak"
    assert channel.calls == KNOWN_AFTER + 1
    assert in_flight == 0, "the failed claim's lease went back with the next batch"
