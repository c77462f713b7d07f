"""The API's gunicorn worker: uvicorn's server on asyncio's loop with the httptools parser.

Named rather than left to uvicorn's "auto", which takes uvloop and httptools wherever they happen to be installed:
the product's server is the same on every machine. gunicorn imports this module in its master, so it imports
nothing of ours.
"""

from __future__ import annotations

from typing import Any, ClassVar

from uvicorn_worker import UvicornWorker


class HttptoolsWorker(UvicornWorker):
    # No access log: gunicorn's is off (service/gunicorn_conf.py), and uvicorn would format a line per request
    # for a logger without handlers.
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {"loop": "asyncio", "http": "httptools", "access_log": False}
