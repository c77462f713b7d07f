"""uvicorn's gunicorn worker with its parser and loop named rather than picked by what is installed ("auto"), for
`python -m bench.experiments servers`: `--worker-class bench.uvicorn_workers.HttptoolsAsyncio` and so on."""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

with warnings.catch_warnings():  # uvicorn.workers says to use the `uvicorn-worker` package; the class is the same
    warnings.simplefilter("ignore", DeprecationWarning)
    from uvicorn.workers import UvicornWorker


class HttptoolsAsyncio(UvicornWorker):
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {"loop": "asyncio", "http": "httptools"}


class HttptoolsUvloop(UvicornWorker):
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {"loop": "uvloop", "http": "httptools"}
