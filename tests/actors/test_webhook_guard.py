"""The SSRF guard inside a real worker: webhook jobs aimed at 127.0.0.1, [::1], a 10.x address or the cloud metadata
address 169.254.169.254 fail after one attempt as refused, without a connection being opened. The loopback targets
are real local sinks that must hear nothing; for the others, every connection this process tries to open to a
non-loopback address is recorded and refused by the test, so no packet ever leaves the machine."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from actors.channels import build_channels
from actors.channels.webhook import WebhookChannel
from ledger.states import Status
from tests.actors.conftest import running_worker, submit, wait_for_status
from tests.conftest import unavailable
from tests.webhook_sink import webhook_sink


@pytest.fixture
def outbound(monkeypatch) -> list[object]:
    """Connections attempted to non-loopback addresses: recorded, refused, never made."""
    attempted: list[object] = []
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address: object) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                loopback = ipaddress.ip_address(str(address[0]).split("%")[0]).is_loopback  # type: ignore[index]
            except ValueError:
                loopback = False
            if not loopback:
                attempted.append(address)
                raise ConnectionRefusedError(f"the test refuses a connection to {address}")
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempted


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
def guarded_settings(make_settings):
    return make_settings(WJP_WEBHOOK_ALLOW_PRIVATE="false")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_webhook_to_a_loopback_sink_fails_after_one_attempt_and_the_sink_hears_nothing(
    guarded_settings, database, dispatcher, outbound, host
):
    if host == "::1" and not ipv6_loopback_available():
        unavailable("no IPv6 loopback on this machine")
    with webhook_sink(host=host) as sink, running_worker(guarded_settings, database):
        # Intake refuses a literal loopback address; record the job directly to test the worker's own guard
        job_id = submit(database, dispatcher, guarded_settings, channel="webhook", recipient=sink.url)
        job = wait_for_status(database, job_id)
        assert sink.count() == 0

    assert (job.status, job.attempts) == (Status.FAILED, 1)
    assert "refused" in job.last_error and "loopback" in job.last_error
    assert outbound == []


@pytest.mark.parametrize("target", ["http://10.1.2.3/hook", "http://169.254.169.254/latest/meta-data/"])
def test_a_webhook_to_a_private_or_metadata_address_fails_refused_without_any_connection(
    guarded_settings, database, dispatcher, outbound, target
):
    with running_worker(guarded_settings, database):
        job_id = submit(database, dispatcher, guarded_settings, channel="webhook", recipient=target)
        job = wait_for_status(database, job_id)

    assert (job.status, job.attempts) == (Status.FAILED, 1)
    assert "refused" in job.last_error
    assert outbound == []


def test_a_host_name_resolving_to_a_private_address_is_refused_after_resolution_without_any_connection(
    guarded_settings, database, dispatcher, outbound
):
    looked_up: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        looked_up.append(host)
        return ["10.0.0.7"]

    channels = build_channels(guarded_settings.channels)
    channels["webhook"] = WebhookChannel(guarded_settings.channels, resolver=resolver)
    with running_worker(guarded_settings, database, channels=channels):
        job_id = submit(
            database, dispatcher, guarded_settings, channel="webhook", recipient="http://hooks.internal.example/in"
        )
        job = wait_for_status(database, job_id)

    assert looked_up == ["hooks.internal.example"]
    assert (job.status, job.attempts) == (Status.FAILED, 1)
    assert "refused, no request sent" in job.last_error and "10.0.0.7" in job.last_error
    assert outbound == []


def test_with_the_allow_flag_a_loopback_sink_receives_the_webhook(make_settings, database, dispatcher):
    settings = make_settings(WJP_WEBHOOK_ALLOW_PRIVATE="true")
    with webhook_sink() as sink, running_worker(settings, database):
        job_id = submit(database, dispatcher, settings, channel="webhook", recipient=sink.url)
        job = wait_for_status(database, job_id)
        assert sink.count(job_id) == 1

    assert job.status is Status.SUCCESS


def test_the_connection_check_of_these_tests_does_catch_an_attempt(make_settings, database, dispatcher, outbound):
    # With the guard off, the worker does try 10.1.2.3: the fixture records and refuses it, so the assertions
    # above that nothing was attempted are meaningful (and still nothing leaves the machine).
    settings = make_settings(WJP_WEBHOOK_ALLOW_PRIVATE="true", WJP_MAX_ATTEMPTS="1")
    with running_worker(settings, database):
        job = wait_for_status(
            database, submit(database, dispatcher, settings, channel="webhook", recipient="http://10.1.2.3/hook")
        )

    assert job.status is Status.FAILED and "could not connect" in job.last_error
    assert [address[0] for address in outbound] == ["10.1.2.3"]  # type: ignore[index]
