"""An in-process Redis for `wjp dev`: fakeredis's TCP server (with Lua), so the API, the workers and the
reconciler speak real Redis protocol to it and run the same code paths as in production."""

from __future__ import annotations

import socket
import threading

from fakeredis import TcpFakeServer


class EmbeddedRedis:
    """Serves on 127.0.0.1 (a free port unless one is given) from a daemon thread until `stop`."""

    def __init__(self, port: int = 0) -> None:
        if port == 0:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
        self.port = port
        TcpFakeServer.allow_reuse_address = True
        self._server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="embedded-redis", daemon=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
