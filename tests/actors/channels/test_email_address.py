"""Which recipients, SMTP URLs and senders the email channel accepts, and the sentences it refuses the others with."""

from __future__ import annotations

import pytest

from actors.channels import ChannelConfig
from actors.channels.email import EmailChannel
from actors.channels.email_address import parse_smtp_url


@pytest.mark.parametrize(
    "address",
    ["ada@example.com", "first.last+tag@mail.example.co.uk", "root@localhost", "o'brien@example.ie"],
)
def test_plausible_addresses_are_accepted(address: str) -> None:
    assert EmailChannel(ChannelConfig()).check_recipient(address) is None


@pytest.mark.parametrize(
    "address",
    [
        "",
        "ada",
        "ada@@example.com",
        "ada@example",
        "@example.com",
        "ada @example.com",
        "ada@example.com\n",
        "a@b@example.com",
        "Ada <ada@example.com>",
        "ada@-example.com",
        "ada..x@example.com",
        "a" * 250 + "@example.com",
        "ada@example.com, eve@example.com",
    ],
)
def test_implausible_addresses_are_refused_with_a_sentence(address: str) -> None:
    problem = EmailChannel(ChannelConfig()).check_recipient(address)

    assert problem is not None
    assert problem.endswith(".")


def test_smtp_urls_default_to_port_25_for_smtp_and_465_for_smtps() -> None:
    assert parse_smtp_url("smtp://mail.example.com").port == 25
    assert parse_smtp_url("smtps://mail.example.com").port == 465
    assert parse_smtp_url("smtp://mail.example.com:587?starttls=true").starttls is True
    assert parse_smtp_url("smtp://mail.example.com").username is None


@pytest.mark.parametrize(
    "url",
    [
        "http://mail.example.com",
        "smtp://",
        "smtp://mail.example.com:99999",
        "smtps://h?starttls=true",
        "smtp://h?tls=1",
        "smtp://h?allow_plaintext_auth=maybe",
    ],
)
def test_a_malformed_smtp_url_is_refused_naming_the_variable(url: str) -> None:
    with pytest.raises(ValueError, match="WJP_SMTP_URL"):
        EmailChannel(ChannelConfig(smtp_url=url))


def test_an_unusable_sender_stops_start_up_naming_the_variable() -> None:
    with pytest.raises(ValueError, match="WJP_EMAIL_FROM"):
        EmailChannel(ChannelConfig(email_from="not an address"))
