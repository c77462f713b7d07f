"""The webhook channel against a real HTTP server on loopback, and its SSRF guard."""

from __future__ import annotations

import base64
import ipaddress
import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from actors.channels import ChannelConfig, Notification, PermanentError, TransientError, webhook
from actors.channels.netguard import host_refusal, refusal_reason, system_resolver
from actors.channels.webhook import MAX_RETRY_AFTER, USER_AGENT, WebhookChannel, parse_retry_after
from tests.actors.channels.conftest import HttpServer, Reply, free_port, gzip_bomb, peak_memory

JOB = uuid.UUID("5f1d7c2e-3b9a-4c60-8f2e-7a3d9b1c0e42")
SECRET = "whsec_" + base64.b64encode(b"a key of thirty-two bytes, really").decode()
#: A name no resolver knows: a request reaching the server under it proves the pinned address was used.
FAKE_HOST = "hooks.example.test"


def notification(url: str, **changes: object) -> Notification:
    fields: dict[str, object] = {
        "job_id": JOB,
        "recipient": url,
        "message": "Grüße — your order has shipped",
        "metadata": {"order": 42, "tags": ["a", "b"]},
        "attempt": 1,
    }
    fields.update(changes)
    return Notification(**fields)  # type: ignore[arg-type]


def channel(*, allow_private: bool = True, secret: str | None = None, **options: object) -> WebhookChannel:
    config = ChannelConfig(webhook_allow_private=allow_private, webhook_secret=secret, webhook_timeout=2)
    return WebhookChannel(config, **options)  # type: ignore[arg-type]


def resolving(table: dict[str, list[str]], calls: list[str] | None = None) -> Callable[[str, int], list[str]]:
    """A resolver answering from `table`, recording each name it is asked for."""

    def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        return table[host]

    return resolve


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


# Kept connections: a thread's deliveries to one endpoint reuse a connection, and only there.


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_deliveries_to_one_endpoint_reuse_one_connection(make_http_server: Callable[..., HttpServer]) -> None:
    server = make_http_server(keep_alive=True)
    webhooks = channel()

    for _ in range(3):
        assert webhooks.deliver(notification(f"{server.url}/hooks")) == "HTTP 200"

    assert len(server.requests) == 3
    assert len({request.client_port for request in server.requests}) == 1
    assert server.closed_ports == []


def test_a_kept_connections_socket_is_duplicated_for_the_deadline_once_not_per_attempt(
    make_http_server: Callable[..., HttpServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_http_server(keep_alive=True)
    webhooks = channel()
    duplicated: list[int] = []
    fromfd = socket.fromfd
    monkeypatch.setattr(socket, "fromfd", lambda fd, *args: duplicated.append(fd) or fromfd(fd, *args))

    for _ in range(3):
        deadline = time.monotonic() + 5
        assert webhooks.deliver(notification(f"{server.url}/hooks", deadline=deadline)) == "HTTP 200"

    assert len({request.client_port for request in server.requests}) == 1
    assert len(duplicated) == 1


def test_another_host_name_on_the_same_address_gets_a_connection_of_its_own(
    make_http_server: Callable[..., HttpServer],
) -> None:
    server = make_http_server(keep_alive=True)
    webhooks = channel(resolver=resolving({"a.example.test": ["127.0.0.1"], "b.example.test": ["127.0.0.1"]}))

    for host in ("a.example.test", "b.example.test", "a.example.test"):
        webhooks.deliver(notification(f"http://{host}:{server.port}/"))

    first, other, again = (request.client_port for request in server.requests)
    assert first == again != other


def test_a_tls_connection_checked_for_one_host_name_is_not_reused_for_another_on_its_address(
    make_http_server: Callable[..., HttpServer], make_certificate: Callable[[str], tuple[Path, Path]]
) -> None:
    cert = make_certificate(f"DNS:{FAKE_HOST}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert)
    server = make_http_server("127.0.0.1", context, keep_alive=True)
    trusting = ssl.create_default_context(cafile=str(cert[0]))
    addresses = {FAKE_HOST: ["127.0.0.1"], "unnamed.example.test": ["127.0.0.1"]}
    webhooks = channel(resolver=resolving(addresses), ssl_context=trusting)

    assert webhooks.deliver(notification(f"https://{FAKE_HOST}:{server.port}/")) == "HTTP 200"
    with pytest.raises(TransientError, match="certificate"):
        webhooks.deliver(notification(f"https://unnamed.example.test:{server.port}/"))
    assert len(server.requests) == 1


def test_a_connection_the_receiver_closed_while_idle_is_replaced(make_http_server: Callable[..., HttpServer]) -> None:
    server = make_http_server(keep_alive=True, idle_timeout=0.2)
    webhooks = channel()

    webhooks.deliver(notification(f"{server.url}/"))
    assert wait_for(lambda: server.closed_ports == [server.requests[0].client_port])
    assert webhooks.deliver(notification(f"{server.url}/")) == "HTTP 200"

    assert server.requests[1].client_port != server.requests[0].client_port


def test_a_connection_idle_longer_than_the_keepalive_is_not_reused(
    make_http_server: Callable[..., HttpServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhook, "KEEPALIVE_SECONDS", 0.1)
    server = make_http_server(keep_alive=True)
    webhooks = channel()

    webhooks.deliver(notification(f"{server.url}/"))
    time.sleep(0.3)
    webhooks.deliver(notification(f"{server.url}/"))

    assert server.requests[1].client_port != server.requests[0].client_port
    assert wait_for(lambda: server.closed_ports == [server.requests[0].client_port])


def test_a_connection_left_idle_past_the_keepalive_is_closed_at_the_threads_next_delivery_anywhere(
    make_http_server: Callable[..., HttpServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhook, "KEEPALIVE_SECONDS", 0.1)
    server = make_http_server(keep_alive=True)
    webhooks = channel(resolver=resolving({"a.example.test": ["127.0.0.1"], "b.example.test": ["127.0.0.1"]}))

    webhooks.deliver(notification(f"http://a.example.test:{server.port}/"))
    time.sleep(0.3)
    webhooks.deliver(notification(f"http://b.example.test:{server.port}/"))

    assert wait_for(lambda: server.closed_ports == [server.requests[0].client_port])


def test_a_thread_keeps_connections_to_a_bounded_number_of_endpoints(
    make_http_server: Callable[..., HttpServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhook, "ENDPOINTS_PER_THREAD", 2)
    server = make_http_server(keep_alive=True)
    hosts = ["a.example.test", "b.example.test", "c.example.test"]
    webhooks = channel(resolver=resolving({host: ["127.0.0.1"] for host in hosts}))

    for host in hosts:
        webhooks.deliver(notification(f"http://{host}:{server.port}/"))

    # The least recently used endpoint's connection is closed; the other two stay open.
    assert wait_for(lambda: server.closed_ports == [server.requests[0].client_port])
    time.sleep(0.1)
    assert server.closed_ports == [server.requests[0].client_port]


def test_a_receivers_cookies_are_not_sent_with_later_deliveries(make_http_server: Callable[..., HttpServer]) -> None:
    server = make_http_server(keep_alive=True)
    server.reply = Reply(headers={"Set-Cookie": "session=abc; Path=/"})
    webhooks = channel()

    webhooks.deliver(notification(f"{server.url}/"))
    webhooks.deliver(notification(f"{server.url}/"))

    assert server.requests[0].client_port == server.requests[1].client_port
    assert "cookie" not in server.requests[1].headers


def test_threads_deliver_over_connections_of_their_own(make_http_server: Callable[..., HttpServer]) -> None:
    server = make_http_server(keep_alive=True)
    webhooks = channel()

    def deliver_twice() -> None:
        for _ in range(2):
            webhooks.deliver(notification(f"{server.url}/"))

    threads = [threading.Thread(target=deliver_twice) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(server.requests) == 4
    assert len({request.client_port for request in server.requests}) == 2


# The SSRF guard: with private targets not allowed, nothing reaches the loopback server.


def test_a_loopback_ipv4_target_is_refused_and_no_request_is_sent(http_server: HttpServer) -> None:
    with pytest.raises(PermanentError, match="loopback"):
        channel(allow_private=False).deliver(notification(http_server.url))
    assert http_server.requests == []


def test_a_loopback_ipv6_target_is_refused_and_no_request_is_sent(
    make_http_server: Callable[..., HttpServer],
) -> None:
    server = make_http_server("::1")

    with pytest.raises(PermanentError, match="loopback"):
        channel(allow_private=False).deliver(notification(server.url))
    assert server.requests == []


def test_localhost_is_refused_and_no_request_is_sent(http_server: HttpServer) -> None:
    with pytest.raises(PermanentError, match="localhost"):
        channel(allow_private=False).deliver(notification(f"http://localhost:{http_server.port}/"))
    assert http_server.requests == []


def test_a_host_name_that_resolves_to_loopback_is_refused_after_resolution(http_server: HttpServer) -> None:
    calls: list[str] = []
    webhooks = channel(allow_private=False, resolver=resolving({FAKE_HOST: ["127.0.0.1"]}, calls))

    with pytest.raises(PermanentError, match=r"no request sent: 127\.0\.0\.1 is a loopback address"):
        webhooks.deliver(notification(f"http://{FAKE_HOST}:{http_server.port}/"))
    assert calls == [FAKE_HOST]
    assert http_server.requests == []


def test_the_system_resolver_finds_localhost_and_the_delivery_reaches_it(http_server: HttpServer) -> None:
    # localhost may resolve to ::1 first while the server listens on 127.0.0.1 only: the
    # refused connection moves on to the next address.
    assert "127.0.0.1" in system_resolver("localhost", http_server.port)

    assert channel().deliver(notification(f"http://localhost:{http_server.port}/")) == "HTTP 200"
    assert http_server.requests[0].headers["host"] == f"localhost:{http_server.port}"


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.1", "0x7f000001", "::1", "::ffff:1.2.3.4", "::ffff:102:304", "64:ff9b::1.2.3.4"]
)
def test_the_system_resolver_answers_an_ip_literal_as_getaddrinfo_does_without_asking_it(
    host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    looked_up = [str(info[4][0]) for info in socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)]

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{host} was looked up")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    assert system_resolver(host, 80) == looked_up


def test_one_private_address_among_public_ones_refuses_the_whole_host(http_server: HttpServer) -> None:
    # Nothing is connected to: the refusal comes before any request, so the public address is never used.
    webhooks = channel(allow_private=False, resolver=resolving({FAKE_HOST: ["93.184.216.34", "10.0.0.7"]}))

    with pytest.raises(PermanentError, match=r"10\.0\.0\.7 is a private address"):
        webhooks.deliver(notification(f"http://{FAKE_HOST}:{http_server.port}/"))


def test_a_lookup_failure_is_transient() -> None:
    def failing(host: str, port: int) -> list[str]:
        raise OSError("temporary failure in name resolution")

    with pytest.raises(TransientError, match="could not resolve"):
        channel(allow_private=False, resolver=failing).deliver(notification(f"http://{FAKE_HOST}/"))


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.254",
        "192.168.1.1",
        "169.254.169.254",
        "fe80::1",
        "fd00:ec2::254",
        "100.64.0.1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "2002:7f00:1::",
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "ff02::1",
        "240.0.0.1",
        "255.255.255.255",
    ],
)
def test_the_classifier_refuses_loopback_private_link_local_and_other_special_addresses(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:93.184.216.34"])
def test_the_classifier_allows_public_addresses(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("host", ["localhost", "LocalHost.", "api.localhost", "metadata.google.internal", "127.1"])
def test_names_for_this_machine_and_metadata_services_are_refused_without_a_lookup(host: str) -> None:
    assert host_refusal(host) is not None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://[::1]:8080/",
        "http://10.0.0.5/",
        "http://169.254.169.254/latest/meta-data",
        "http://localhost:8080/",
        "https://0x7f000001/",
        "http://[::ffff:127.0.0.1]/",
    ],
)
def test_a_literal_private_target_is_refused_at_intake_with_a_reason(url: str) -> None:
    problem = channel(allow_private=False).check_recipient(url)

    assert problem is not None
    assert problem.startswith("The webhook URL is refused because")


def test_a_literal_private_target_is_accepted_at_intake_when_private_targets_are_allowed() -> None:
    assert channel(allow_private=True).check_recipient("http://127.0.0.1:8080/hook") is None


@pytest.mark.parametrize("url", ["https://hooks.example.com/wjp", "http://93.184.216.34:8080/x?y=1"])
def test_absolute_http_urls_are_accepted_at_intake(url: str) -> None:
    assert channel(allow_private=False).check_recipient(url) is None


@pytest.mark.parametrize(
    "url", ["", "hooks.example.com/x", "/relative", "ftp://example.com/", "http:///nohost", "http://exa mple.com/"]
)
def test_anything_but_an_absolute_http_url_is_refused_at_intake(url: str) -> None:
    assert channel().check_recipient(url) is not None


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
