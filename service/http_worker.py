"""The API's gunicorn worker: uvicorn's server on asyncio's loop with the httptools parser.

Named rather than left to uvicorn's "auto", which takes uvloop and httptools wherever they happen to be installed:
the product's server is the same on every machine. gunicorn imports this module in its master, so it imports
nothing of ours.
"""

from __future__ import annotations

from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker


class FirstRequestServedProtocol(HttpToolsProtocol):
    """uvicorn's httptools connection, except that a shutdown serves the first request of a connection accepted just
    before it instead of closing the connection with that request unread.

    uvicorn closes every connection without a request under way when the worker stops (max_requests, a HUP, a
    SIGTERM). A connection it accepted a moment earlier has a client that is sending its request: closing it resets
    that request. Here such a connection is given the keep-alive timeout to bring its request, which is answered with
    `connection: close`. Idle keep-alive connections are closed as before. Relies on uvicorn's protocol internals
    (`cycle`, `shutdown`), so uvicorn is pinned in constraints.txt (tests/service/test_http_worker.py).
    """

    _drain_first_request = False

    def shutdown(self) -> None:
        if self.cycle is not None or self.transport.is_closing():
            super().shutdown()
            return
        self._drain_first_request = True
        self.loop.call_later(self.timeout_keep_alive, self._close_if_no_request_came)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self._drain_first_request and self.cycle is not None:
            self.cycle.keep_alive = False

    def _close_if_no_request_came(self) -> None:
        if self.cycle is None:
            self.transport.close()


class HttptoolsWorker(UvicornWorker):
    # No access log: gunicorn's is off (service/gunicorn_conf.py), and uvicorn would format a line per request
    # for a logger without handlers.
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "asyncio",
        "http": FirstRequestServedProtocol,
        "access_log": False,
    }
