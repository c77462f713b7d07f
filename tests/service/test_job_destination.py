"""A job's destination is computed at intake from its channel and recipient, and shown in its GET body."""

from __future__ import annotations

import pytest

from tests.service.conftest import notification, post

SMS_GATEWAY = {
    "WJP_SMS_URL": "https://Gateway.Example.net/sms",
    "WJP_SMS_ACCOUNT": "AC1",
    "WJP_SMS_TOKEN": "token",
    "WJP_SMS_FROM": "+15005550006",
}


def destination_of(client, **fields) -> str:
    created = post(client, notification(**fields))
    assert created.status_code == 202, created.text
    return client.simulate_get(f"/api/notifications/{created.json['job_id']}").json["destination"]


@pytest.mark.parametrize(
    ("recipient", "destination"),
    [
        ("https://Example.COM/hook", "webhook:example.com:443"),
        ("http://example.com:8080/x", "webhook:example.com:8080"),
        ("http://example.com/x", "webhook:example.com:80"),
        ("https://[2001:db8::1]/x", "webhook:[2001:db8::1]:443"),
    ],
)
def test_a_webhook_job_is_destined_to_its_host_and_port(client, recipient: str, destination: str) -> None:
    assert destination_of(client, channel="webhook", recipient=recipient) == destination


def test_an_email_job_is_destined_to_the_outbox_without_a_relay(client) -> None:
    assert destination_of(client, channel="email", recipient="user@example.com") == "email:outbox"


def test_an_email_job_is_destined_to_the_relay_of_wjp_smtp_url(make_client) -> None:
    client = make_client(WJP_SMTP_URL="smtp://SMTP.example.com:587")

    assert destination_of(client, channel="email", recipient="user@example.com") == "email:smtp.example.com:587"


def test_a_log_job_is_destined_to_log_and_an_sms_job_to_its_gateway(make_client) -> None:
    client = make_client(**SMS_GATEWAY)

    assert destination_of(client, channel="log", recipient="ops") == "log"
    assert destination_of(client, channel="sms", recipient="+14155550123") == "sms:gateway.example.net"
