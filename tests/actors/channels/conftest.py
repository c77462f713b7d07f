"""Real local servers for the channel tests: an HTTP server and an SMTP server, on loopback only."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.conftest import unavailable


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago on `host`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    #: Header names in lower case.
    headers: dict[str, str]
    body: bytes
    #: The client's port: requests that share it came over one connection.
    client_port: int = 0


@dataclass
class Reply:
    """What the server answers; `hang` makes it wait (up to the test's end) before answering."""

    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0


class HttpServer:
    """A threading HTTP server on loopback that records every request and answers with `reply`.

    It closes each connection after one reply, unless `keep_alive` (HTTP/1.1); then it closes one after
    `idle_timeout` seconds without a request, if given. `closed_ports` lists the client ports of the
    connections that ended, in order.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
        *,
        keep_alive: bool = False,
        idle_timeout: float | None = None,
    ) -> None:
        self.requests: list[Recorded] = []
        #: Replies begun: counted before a byte of the reply is sent, so a client that has one is counted.
        self.replies = 0
        self.closed_ports: list[int] = []
        self.reply = Reply()
        self.released = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"
            timeout = idle_timeout

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                headers = {k.lower(): v for k, v in self.headers.items()}
                owner.requests.append(
                    Recorded("POST", self.path, headers, self.rfile.read(length), self.client_address[1])
                )
                reply = owner.reply
                if reply.hang:
                    owner.released.wait(reply.hang)
                owner.replies += 1
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # The client gave up waiting (a timeout under test): nothing to report.

            def finish(self) -> None:
                super().finish()
                owner.closed_ports.append(self.client_address[1])

            def log_message(self, format: str, *args: object) -> None:
                pass  # Keep pytest's output to the test results.

        server_class = ThreadingHTTPServer
        if ":" in host:
            server_class = type("ThreadingHTTPServer6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
        self.server = server_class((host, 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.port = int(self.server.server_address[1])
        self.host = host
        # A short poll interval: shutdown() waits for it, once per test.
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def stop(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    server = HttpServer()
    yield server
    server.stop()


@pytest.fixture
def make_http_server() -> Iterator[Callable[..., HttpServer]]:
    """Start servers on other loopback addresses (IPv6), with TLS or keeping connections alive; they all stop
    at the test's end."""
    servers: list[HttpServer] = []

    def start(host: str = "127.0.0.1", tls: ssl.SSLContext | None = None, **options: Any) -> HttpServer:
        try:
            server = HttpServer(host, tls, **options)
        except OSError as exc:
            unavailable(f"cannot listen on {host}: {exc}")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


class SmtpHandler:
    """An aiosmtpd handler that keeps every envelope and can refuse RCPT or DATA with a reply."""

    def __init__(self) -> None:
        self.envelopes: list[object] = []
        #: The client's (address, port) of each accepted envelope: envelopes that share it came in one session.
        self.peers: list[tuple[str, int]] = []
        self.rcpt_reply: str | None = None
        self.data_reply: str | None = None
        #: How many sessions the client ended with QUIT.
        self.quits = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_QUIT(self, server, session, envelope):
        self.quits += 1
        return "221 Bye"

    async def handle_DATA(self, server, session, envelope):
        if self.data_reply:
            return self.data_reply
        self.envelopes.append(envelope)
        self.peers.append(session.peer)
        return "250 Message accepted for delivery"


@dataclass
class SmtpServer:
    """A running aiosmtpd server and the handler that records what it received."""

    controller: Controller
    handler: SmtpHandler
    port: int


@pytest.fixture
def start_smtp() -> Iterator[Callable[..., SmtpServer]]:
    """Start an aiosmtpd server on 127.0.0.1 with the given Controller options."""
    controllers: list[Controller] = []

    def start(**options: object) -> SmtpServer:
        handler = SmtpHandler()
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port, **options)
        controller.start()
        controllers.append(controller)
        return SmtpServer(controller, handler, port)

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture
def smtp_server(start_smtp: Callable[..., SmtpServer]) -> SmtpServer:
    return start_smtp()


@pytest.fixture(scope="session")
def make_certificate(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Path]]:
    """Make a throwaway self-signed certificate (cert, key) for a subjectAltName like "IP:127.0.0.1"."""
    if shutil.which("openssl") is None:
        unavailable("the openssl command is not installed")
    made: dict[str, tuple[Path, Path]] = {}

    def make(subject_alt_name: str) -> tuple[Path, Path]:
        if subject_alt_name not in made:
            directory = tmp_path_factory.mktemp("tls")
            cert, key = directory / "cert.pem", directory / "key.pem"
            subprocess.run(
                [
                    *("openssl", "req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=wjp test"),
                    *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
                    *("-addext", f"subjectAltName={subject_alt_name}", "-keyout", str(key), "-out", str(cert)),
                ],
                check=True,
                capture_output=True,
            )
            made[subject_alt_name] = (cert, key)
        return made[subject_alt_name]

    return make


def gzip_bomb(inflated_bytes: int = 64 * 1024 * 1024) -> bytes:
    """A gzip stream of `inflated_bytes` zeros: about a thousandth of that on the wire."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1024 * 1024)
    parts = [compressor.compress(block) for _ in range(inflated_bytes // len(block))]
    return b"".join([*parts, compressor.flush()])


def peak_memory(action: Callable[[], object]) -> int:
    """The most bytes Python held at once, above what it held before, while `action` ran."""
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
