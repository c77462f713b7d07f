"""Webhooks' kept connections: a thread's deliveries to one endpoint reuse a connection, and only there."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from actors.channels import TransientError, webhook
from tests.actors.channels.conftest import HttpServer, Reply
from tests.actors.channels.webhooks import FAKE_HOST, channel, notification, resolving


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
