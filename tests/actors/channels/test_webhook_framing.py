"""The webhook channel's HTTP/1.1 client (`actors.channels.pinned_http`) against receivers on loopback that frame
their responses in every way the protocol allows, and some it does not: what counts as an answer, and which
connections are kept for the next delivery."""

from __future__ import annotations

import socket
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from actors.channels import ChannelConfig, Notification, TransientError
from actors.channels.pinned_http import MAX_INFORMATIONAL
from actors.channels.webhook import MAX_RESPONSE_BYTES, WebhookChannel
from tests.actors.channels.conftest import HttpServer, Reply
from tests.actors.channels.slow_peers import LoopbackServer, read_request


def channel() -> WebhookChannel:
    return WebhookChannel(ChannelConfig(webhook_allow_private=True, webhook_timeout=2))


def notification(url: str) -> Notification:
    return Notification(uuid.uuid4(), url, "Your order has shipped.", deadline=time.monotonic() + 5)


class ScriptedReceiver(LoopbackServer):
    """Reads each request and answers it with `response`, raw; closes the connection afterwards when `close`.
    Records the client port of every request."""

    def __init__(self, response: bytes, *, close: bool = False) -> None:
        self.response = response
        self.close = close
        self.ports: list[int] = []
        super().__init__(None)

    def serve(self, conn: socket.socket, port: int) -> None:
        with conn.makefile("rb") as reader:
            while read_request(reader):
                self.ports.append(port)
                conn.sendall(self.response)
                if self.close:
                    return


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedReceiver]]:
    receivers: list[ScriptedReceiver] = []

    def make(response: bytes, **options: bool) -> ScriptedReceiver:
        receivers.append(ScriptedReceiver(response, **options))
        return receivers[-1]

    yield make
    for receiver in receivers:
        receiver.stop()


def test_a_response_whose_head_the_receiver_cuts_short_is_no_answer(
    scripted: Callable[..., ScriptedReceiver],
) -> None:
    receiver = scripted(b"HTTP/1.1 200 OK\r\nContent-Type: appli", close=True)

    with pytest.raises(TransientError, match="IncompleteRead"):
        channel().deliver(notification(f"http://127.0.0.1:{receiver.port}/"))


EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"


@pytest.mark.parametrize(
    "response",
    [
        # Informational responses come before the answer on the same connection.
        EARLY_HINTS + b"HTTP/1.1 102 Processing\r\n\r\n" + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ],
    ids=["informational-first", "chunked"],
)
def test_an_answer_is_read_to_its_end_and_its_connection_kept(
    scripted: Callable[..., ScriptedReceiver], response: bytes
) -> None:
    receiver = scripted(response)
    webhooks = channel()

    for _ in range(2):
        assert webhooks.deliver(notification(f"http://127.0.0.1:{receiver.port}/")) == "HTTP 200"

    first, second = receiver.ports
    assert first == second


def test_a_receiver_that_sends_only_informational_responses_gives_no_answer(
    scripted: Callable[..., ScriptedReceiver],
) -> None:
    receiver = scripted(EARLY_HINTS * (MAX_INFORMATIONAL + 1))

    with pytest.raises(TransientError, match="informational responses and no answer"):
        channel().deliver(notification(f"http://127.0.0.1:{receiver.port}/"))


def test_a_response_without_a_length_is_read_to_the_close_and_its_connection_not_kept(
    scripted: Callable[..., ScriptedReceiver],
) -> None:
    receiver = scripted(b"HTTP/1.1 500 Oops\r\n\r\nbroken", close=True)
    webhooks = channel()

    for _ in range(2):
        with pytest.raises(TransientError, match="HTTP 500: broken"):
            webhooks.deliver(notification(f"http://127.0.0.1:{receiver.port}/"))

    first, second = receiver.ports
    assert first != second


def test_a_response_longer_than_the_read_bound_is_quoted_in_part_and_its_connection_not_kept(
    make_http_server: Callable[..., HttpServer],
) -> None:
    server = make_http_server(keep_alive=True)
    server.reply = Reply(status=500, body=b"x" * (4 * MAX_RESPONSE_BYTES))
    webhooks = channel()

    for _ in range(2):
        with pytest.raises(TransientError, match=r"HTTP 500: x{200}$"):
            webhooks.deliver(notification(f"{server.url}/"))

    first, second = (request.client_port for request in server.requests)
    assert first != second


def test_a_receiver_that_answers_connection_close_gets_a_new_connection_next_time(
    make_http_server: Callable[..., HttpServer],
) -> None:
    server = make_http_server(keep_alive=True)
    server.reply = Reply(headers={"Connection": "close"})
    webhooks = channel()

    for _ in range(2):
        assert webhooks.deliver(notification(f"{server.url}/")) == "HTTP 200"

    first, second = (request.client_port for request in server.requests)
    assert first != second


def test_a_line_break_in_a_header_is_never_sent(http_server: HttpServer) -> None:
    with pytest.raises(ValueError, match="line break"):
        channel().post_event(f"{http_server.url}/", "id\r\nX-Injected: 1", {}, deadline=None)

    assert http_server.requests == []


def test_deliveries_over_tls_reuse_one_connection(
    make_http_server: Callable[..., HttpServer], make_certificate: Callable[[str], tuple[Path, Path]]
) -> None:
    # TLS 1.3 servers send session tickets after the handshake: read with the first response, they must not make
    # the idle connection look closed by the receiver.
    cert = make_certificate("IP:127.0.0.1")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert)
    server = make_http_server("127.0.0.1", context, keep_alive=True)
    config = ChannelConfig(webhook_allow_private=True, webhook_timeout=2)
    webhooks = WebhookChannel(config, ssl_context=ssl.create_default_context(cafile=str(cert[0])))

    for _ in range(3):
        assert webhooks.deliver(notification(f"{server.url}/")) == "HTTP 200"

    assert len({request.client_port for request in server.requests}) == 1
