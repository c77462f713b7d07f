"""Destination keys: each channel names the party it talks to one way however the recipient is spelled, and an
operator's spelling of a key is read into that same form or refused."""

from __future__ import annotations

import pytest

from actors.channels import ChannelConfig, build_channels
from actors.flow.keys import MAX_KEY_LENGTH, MalformedKey, parse_key

SMS = {"sms_url": "https://SMS.Example.com:8443/base", "sms_account": "AC1", "sms_token": "t", "sms_from": "+1500555"}


@pytest.mark.parametrize(
    ("recipient", "key"),
    [
        ("https://Example.COM/hook", "webhook:example.com:443"),
        ("http://example.com/hook", "webhook:example.com:80"),
        ("http://example.com:8080/x", "webhook:example.com:8080"),
        ("https://example.com:443/x", "webhook:example.com:443"),
        ("https://bücher.de/x", "webhook:xn--bcher-kva.de:443"),
        ("https://[2001:DB8:0::1]/x", "webhook:[2001:db8::1]:443"),
        ("http://10.0.0.1:9000/", "webhook:10.0.0.1:9000"),
    ],
)
def test_a_webhook_destination_is_its_host_lower_cased_in_ascii_with_an_explicit_port(recipient, key) -> None:
    webhook = build_channels(ChannelConfig(webhook_allow_private=True))["webhook"]

    assert webhook.check_recipient(recipient) is None
    assert webhook.destination(recipient) == key


def test_an_email_destination_is_the_relay_or_the_outbox() -> None:
    assert build_channels(ChannelConfig())["email"].destination("a@example.com") == "email:outbox"
    relay = build_channels(ChannelConfig(smtp_url="smtp://u:p@SMTP.Example.com:587?starttls=true"))["email"]
    assert relay.destination("a@example.com") == "email:smtp.example.com:587"
    implicit = build_channels(ChannelConfig(smtp_url="smtps://mail.example.com"))["email"]
    assert implicit.destination("b@example.org") == "email:mail.example.com:465"


def test_an_sms_destination_is_the_gateway_host_and_log_is_log() -> None:
    built = build_channels(ChannelConfig(**SMS))  # type: ignore[arg-type]

    assert built["sms"].destination("+14155550123") == "sms:sms.example.com"
    assert built["log"].destination("anyone") == "log"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("log", "log"),
        ("email:outbox", "email:outbox"),
        ("webhook:Example.COM:443", "webhook:example.com:443"),
        ("webhook:[2001:DB8::1]:443", "webhook:[2001:db8::1]:443"),
        ("webhook:[::1]", "webhook:[::1]"),
        ("sms:api.twilio.com", "sms:api.twilio.com"),
        ("webhook:bücher.de:443", "webhook:xn--bcher-kva.de:443"),
        ("webhook:my_host.internal:65535", "webhook:my_host.internal:65535"),
    ],
)
def test_a_well_formed_key_reads_as_its_canonical_spelling(text: str, key: str) -> None:
    assert parse_key(text) == key


@pytest.mark.parametrize(
    "text",
    [
        "",
        ":",
        "log:",
        "Webhook:example.com",
        "9webhook",
        "webhook::443",
        "webhook:example.com:0",
        "webhook:example.com:65536",
        "webhook:example.com:4a3",
        "webhook:example.com:443:1",
        "webhook:exa mple.com:443",
        "webhook:example..com",
        "webhook:[2001:db8::1",
        "webhook:[not-ipv6]:443",
        "webhook:[::1]x",
        "webhook:<script>",
        "webhook:a/b",
        "webhook:" + "a" * MAX_KEY_LENGTH,
    ],
)
def test_a_malformed_key_is_refused_saying_why(text: str) -> None:
    with pytest.raises(MalformedKey) as refused:
        parse_key(text)

    assert str(refused.value)


def test_a_key_read_back_from_a_channel_is_the_same_key() -> None:
    webhook = build_channels(ChannelConfig(webhook_allow_private=True))["webhook"]
    for recipient in ("https://Example.COM/hook", "https://[2001:db8::1]:8443/", "https://bücher.de/"):
        key = webhook.destination(recipient)
        assert parse_key(key) == key
