"""The webhook channel's SSRF guard, at delivery and at intake."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

import pytest

from actors.channels import PermanentError, TransientError
from actors.channels.netguard import host_refusal, refusal_reason, system_resolver
from tests.actors.channels.conftest import HttpServer
from tests.actors.channels.webhooks import FAKE_HOST, channel, notification, resolving


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
