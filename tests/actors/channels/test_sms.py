"""The SMS channel against a real local HTTP server speaking Twilio's Messages API."""

from __future__ import annotations

import base64
import json
import uuid
from urllib.parse import parse_qs

import pytest

from actors.channels import ChannelConfig, Notification, PermanentError, TransientError
from actors.channels.sms import SmsChannel
from tests.actors.channels.conftest import HttpServer, Reply, free_port, gzip_bomb, peak_memory

JOB = uuid.UUID("9c8a1e52-0d3b-4f7e-b1a4-2f6e8d0c5b77")
CREATED = Reply(status=201, body=json.dumps({"sid": "SM0123456789abcdef", "status": "queued"}).encode())


def notification(**changes: object) -> Notification:
    fields: dict[str, object] = {"job_id": JOB, "recipient": "+14155550123", "message": "Your code is 4242"}
    fields.update(changes)
    return Notification(**fields)  # type: ignore[arg-type]


def sms(url: str, **changes: object) -> SmsChannel:
    settings: dict[str, object] = {
        "sms_url": url,
        "sms_account": "AC123",
        "sms_token": "s3cr3t",
        "sms_from": "+15005550006",
    }
    settings.update(changes)
    return SmsChannel(ChannelConfig(**settings))  # type: ignore[arg-type]


def test_a_message_is_posted_to_the_messages_endpoint_with_basic_auth_and_form_fields(
    http_server: HttpServer,
) -> None:
    http_server.reply = CREATED

    receipt = sms(http_server.url).deliver(notification())

    request = http_server.requests[0]
    assert request.path == "/2010-04-01/Accounts/AC123/Messages.json"
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"AC123:s3cr3t").decode()
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(request.body.decode()) == {
        "To": ["+14155550123"],
        "From": ["+15005550006"],
        "Body": ["Your code is 4242"],
    }
    assert receipt == "sid SM0123456789abcdef"


def test_a_gateway_url_with_a_path_and_a_trailing_slash_keeps_the_path(http_server: HttpServer) -> None:
    sms(http_server.url + "/twilio/").deliver(notification())

    assert http_server.requests[0].path == "/twilio/2010-04-01/Accounts/AC123/Messages.json"


def test_a_reply_without_a_sid_gives_the_status_as_the_receipt(http_server: HttpServer) -> None:
    http_server.reply = Reply(status=200, body=b"queued")

    assert sms(http_server.url).deliver(notification()) == "HTTP 200"


def test_a_400_is_permanent_and_quotes_the_gateway(http_server: HttpServer) -> None:
    error = {"code": 21211, "message": "The 'To' number is not a valid phone number.", "status": 400}
    http_server.reply = Reply(status=400, body=json.dumps(error).encode())

    with pytest.raises(PermanentError, match="21211"):
        sms(http_server.url).deliver(notification())


@pytest.mark.parametrize("status", [408, 429, 500, 503])
def test_rate_limits_and_server_errors_are_transient_with_retry_after(http_server: HttpServer, status: int) -> None:
    http_server.reply = Reply(status=status, headers={"Retry-After": "12"})

    with pytest.raises(TransientError) as caught:
        sms(http_server.url).deliver(notification())
    assert caught.value.retry_after == 12


def test_a_gateway_nobody_listens_on_is_transient() -> None:
    with pytest.raises(TransientError):
        sms(f"http://127.0.0.1:{free_port()}").deliver(notification())


def test_a_number_not_in_e164_form_is_refused_and_nothing_is_sent(http_server: HttpServer) -> None:
    with pytest.raises(PermanentError, match=r"E\.164"):
        sms(http_server.url).deliver(notification(recipient="0415 555 0123"))
    assert http_server.requests == []


def test_the_timeout_is_ten_seconds_cut_to_the_cap() -> None:
    assert sms("http://127.0.0.1:9").timeout == 10
    assert sms("http://127.0.0.1:9", timeout_cap=4).timeout == 4


@pytest.mark.parametrize("number", ["+14155550123", "+4915112345678", "+12345678", "+123456789012345"])
def test_e164_numbers_are_accepted(number: str) -> None:
    assert sms("http://127.0.0.1:9").check_recipient(number) is None


@pytest.mark.parametrize(
    "number",
    ["", "14155550123", "+1234567", "+1234567890123456", "+1 415 555 0123", "+1415555012a", "+14155550123\n"],
)
def test_anything_else_is_refused_with_a_sentence(number: str) -> None:
    problem = sms("http://127.0.0.1:9").check_recipient(number)

    assert problem is not None
    assert problem.endswith(".")


def test_a_gzip_bomb_from_the_gateway_is_never_inflated(http_server: HttpServer) -> None:
    http_server.reply = Reply(status=201, body=gzip_bomb(), headers={"Content-Encoding": "gzip"})
    receipts: list[str] = []

    peak = peak_memory(lambda: receipts.append(sms(http_server.url).deliver(notification())))

    assert peak < 8 * 1024 * 1024, f"{peak} bytes held at once: the body was inflated"
    assert receipts == ["HTTP 201"]
    assert http_server.requests[0].headers["accept-encoding"] == "identity"
