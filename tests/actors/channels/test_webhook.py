"""The webhook channel against a real HTTP server on loopback: the request, the answers, TLS."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from actors.channels import ChannelConfig, PermanentError, TransientError
from actors.channels.webhook import MAX_RETRY_AFTER, USER_AGENT, WebhookChannel, parse_retry_after
from tests.actors.channels.conftest import HttpServer, Reply, free_port, gzip_bomb, peak_memory
from tests.actors.channels.webhooks import FAKE_HOST, JOB, SECRET, channel, notification, resolving


def test_a_2xx_reply_is_a_success_and_the_receipt_names_the_status(http_server: HttpServer) -> None:
    http_server.reply = Reply(status=202)

    assert channel().deliver(notification(http_server.url + "/hooks")) == "HTTP 202"
    assert http_server.requests[0].path == "/hooks"


def test_the_body_is_the_notification_as_json(http_server: HttpServer) -> None:
    url = http_server.url + "/hooks?source=wjp"

    channel().deliver(notification(url, attempt=3))

    assert json.loads(http_server.requests[0].body) == {
        "job_id": str(JOB),
        "recipient": url,
        "message": "Grüße — your order has shipped",
        "metadata": {"order": 42, "tags": ["a", "b"]},
        "attempt": 3,
    }


def test_the_standard_webhooks_headers_are_sent(http_server: HttpServer) -> None:
    channel(secret=SECRET).deliver(notification(http_server.url))

    headers = http_server.requests[0].headers
    assert headers["webhook-id"] == str(JOB)
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    assert headers["webhook-signature"].startswith("v1,")
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == USER_AGENT
    assert headers["host"] == f"127.0.0.1:{http_server.port}"


def test_webhook_signature_verifies_with_the_standardwebhooks_library(http_server: HttpServer) -> None:
    channel(secret=SECRET).deliver(notification(http_server.url))

    request = http_server.requests[0]
    payload = Webhook(SECRET).verify(request.body, request.headers)
    assert payload["job_id"] == str(JOB)


def test_a_secret_without_the_whsec_prefix_signs_the_same_way(http_server: HttpServer) -> None:
    channel(secret=SECRET.removeprefix("whsec_")).deliver(notification(http_server.url))

    request = http_server.requests[0]
    Webhook(SECRET).verify(request.body, request.headers)


def test_without_a_secret_no_signature_is_sent(http_server: HttpServer) -> None:
    channel().deliver(notification(http_server.url))

    assert "webhook-signature" not in http_server.requests[0].headers


def test_a_secret_that_is_not_base64_stops_start_up_naming_the_variable() -> None:
    with pytest.raises(ValueError, match="WJP_WEBHOOK_SECRET"):
        channel(secret="whsec_not base64!")


def test_every_attempt_of_one_job_carries_the_same_webhook_id(http_server: HttpServer) -> None:
    webhooks = channel(secret=SECRET)

    webhooks.deliver(notification(http_server.url, attempt=1))
    webhooks.deliver(notification(http_server.url, attempt=2))

    first, second = (request.headers["webhook-id"] for request in http_server.requests)
    assert first == second == str(JOB)


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
def test_server_errors_timeouts_and_rate_limits_are_transient(http_server: HttpServer, status: int) -> None:
    http_server.reply = Reply(status=status, body=b"busy")

    with pytest.raises(TransientError, match=f"HTTP {status}: busy") as caught:
        channel().deliver(notification(http_server.url))
    assert caught.value.retry_after is None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_other_client_errors_are_permanent(http_server: HttpServer, status: int) -> None:
    http_server.reply = Reply(status=status)

    with pytest.raises(PermanentError, match=f"HTTP {status}"):
        channel().deliver(notification(http_server.url))


def test_a_429_with_retry_after_seconds_carries_them(http_server: HttpServer) -> None:
    http_server.reply = Reply(status=429, headers={"Retry-After": "7"})

    with pytest.raises(TransientError) as caught:
        channel().deliver(notification(http_server.url))
    assert caught.value.retry_after == 7


def test_a_503_with_an_http_date_retry_after_is_measured_from_now(http_server: HttpServer) -> None:
    now = 1_700_000_000.0
    http_server.reply = Reply(status=503, headers={"Retry-After": formatdate(now + 30, usegmt=True)})

    with pytest.raises(TransientError) as caught:
        channel(clock=lambda: now).deliver(notification(http_server.url))
    assert caught.value.retry_after == 30


def test_a_redirect_is_not_followed_and_is_permanent(http_server: HttpServer) -> None:
    http_server.reply = Reply(status=302, headers={"Location": "http://169.254.169.254/latest/meta-data"})

    with pytest.raises(PermanentError, match="redirects are not followed"):
        channel().deliver(notification(http_server.url))
    assert len(http_server.requests) == 1


def test_a_receiver_that_never_answers_is_cut_off_by_the_timeout_as_transient(http_server: HttpServer) -> None:
    # It answers only after a minute (or when the test ends): the channel can return before that only by giving up.
    http_server.reply = Reply(hang=60)
    config = ChannelConfig(webhook_allow_private=True, webhook_timeout=0.5)

    with pytest.raises(TransientError, match="timed out"):
        WebhookChannel(config).deliver(notification(http_server.url))
    assert (len(http_server.requests), http_server.replies) == (1, 0)


def test_the_timeout_is_cut_to_the_cap() -> None:
    config = ChannelConfig(webhook_timeout=120, timeout_cap=50)

    assert WebhookChannel(config).timeout == 50


def test_a_port_nobody_listens_on_is_transient() -> None:
    with pytest.raises(TransientError, match="could not connect"):
        channel().deliver(notification(f"http://127.0.0.1:{free_port()}/"))


def test_the_request_goes_to_the_resolved_address_under_the_original_host_name(http_server: HttpServer) -> None:
    calls: list[str] = []
    webhooks = channel(resolver=resolving({FAKE_HOST: ["127.0.0.1"]}, calls))

    webhooks.deliver(notification(f"http://{FAKE_HOST}:{http_server.port}/hooks"))

    assert calls == [FAKE_HOST]  # one lookup: the address checked is the address used
    assert http_server.requests[0].headers["host"] == f"{FAKE_HOST}:{http_server.port}"


def test_the_next_address_is_tried_when_the_first_refuses_the_connection(http_server: HttpServer) -> None:
    webhooks = channel(resolver=resolving({FAKE_HOST: ["::1", "127.0.0.1"]}))

    assert webhooks.deliver(notification(f"http://{FAKE_HOST}:{http_server.port}/")) == "HTTP 200"
    assert len(http_server.requests) == 1


def tls_server(make_http_server: Callable[..., HttpServer], cert: tuple[Path, Path]) -> HttpServer:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert)
    return make_http_server("127.0.0.1", context)


def test_https_checks_the_certificate_against_the_original_host_name_not_the_address(
    make_http_server: Callable[..., HttpServer], make_certificate: Callable[[str], tuple[Path, Path]]
) -> None:
    cert = make_certificate(f"DNS:{FAKE_HOST}")
    server = tls_server(make_http_server, cert)
    trusting = ssl.create_default_context(cafile=str(cert[0]))
    webhooks = channel(resolver=resolving({FAKE_HOST: ["127.0.0.1"]}), ssl_context=trusting)

    assert webhooks.deliver(notification(f"https://{FAKE_HOST}:{server.port}/")) == "HTTP 200"
    assert server.requests[0].headers["host"] == f"{FAKE_HOST}:{server.port}"


def test_an_internationalized_host_is_resolved_and_checked_by_its_idna_2008_name(
    make_http_server: Callable[..., HttpServer], make_certificate: Callable[[str], tuple[Path, Path]]
) -> None:
    # IDNA 2003 (Python's "idna" codec, which getaddrinfo and the ssl module apply to a str host) maps "ß" to "ss":
    # faß.example would be looked up, and its certificate checked, as fass.example, another domain.
    a_label = "xn--fa-hia.example"
    cert = make_certificate(f"DNS:{a_label}")
    server = tls_server(make_http_server, cert)
    trusting = ssl.create_default_context(cafile=str(cert[0]))
    calls: list[str] = []
    webhooks = channel(resolver=resolving({a_label: ["127.0.0.1"]}, calls), ssl_context=trusting)

    assert webhooks.deliver(notification(f"https://faß.example:{server.port}/")) == "HTTP 200"
    assert calls == [a_label]
    assert server.requests[0].headers["host"] == f"{a_label}:{server.port}"


def test_https_to_a_host_the_certificate_does_not_name_is_transient_and_sends_nothing(
    make_http_server: Callable[..., HttpServer], make_certificate: Callable[[str], tuple[Path, Path]]
) -> None:
    cert = make_certificate("DNS:other.example.test")
    server = tls_server(make_http_server, cert)
    trusting = ssl.create_default_context(cafile=str(cert[0]))
    webhooks = channel(resolver=resolving({FAKE_HOST: ["127.0.0.1"]}), ssl_context=trusting)

    with pytest.raises(TransientError, match="certificate"):
        webhooks.deliver(notification(f"https://{FAKE_HOST}:{server.port}/"))
    assert server.requests == []


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("7", 7.0),
        (" 0 ", 0.0),
        ("-3", 0.0),
        ("1.5", 1.5),
        ("999999", MAX_RETRY_AFTER),
        (formatdate(1_700_000_060, usegmt=True), 60.0),
        (formatdate(1_699_999_000, usegmt=True), 0.0),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date_and_capped(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, now=1_700_000_000) == expected


def test_a_gzip_bomb_from_the_receiver_is_never_inflated(http_server: HttpServer) -> None:
    # 64 MiB of zeros in 64 KiB on the wire, sent although the request asked for no encoding.
    http_server.reply = Reply(status=500, body=gzip_bomb(), headers={"Content-Encoding": "gzip"})
    failures: list[TransientError] = []

    def deliver() -> None:
        try:
            channel().deliver(notification(http_server.url))
        except TransientError as exc:
            failures.append(exc)

    peak = peak_memory(deliver)

    assert peak < 8 * 1024 * 1024, f"{peak} bytes held at once: the body was inflated"
    assert [str(exc) for exc in failures] == ["HTTP 500"]
    assert http_server.requests[0].headers["accept-encoding"] == "identity"
