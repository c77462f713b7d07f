"""How every process writes its log lines: `WJP_LOG_FORMAT=human` (the default) or `json`, one object per line.

Standard library only: gunicorn's master loads `JsonFormatter` through its logging config before any fork.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

VARIABLE = "WJP_LOG_FORMAT"
FORMATS = ("human", "json")
#: The human format of the `wjp` commands (Dramatiq and gunicorn keep their own).
HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: What a log line may say about the job in hand, besides its text.
JOB_FIELDS = ("job_id", "attempt", "destination", "trace_id")

#: The job a worker thread is on: set per message (`actors.observe`), read by `JsonFormatter`.
_job: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("wjp_job", default=None)


class BadLogFormat(ValueError):
    """`WJP_LOG_FORMAT` names no format; the message names the variable."""


def log_format(environ: Mapping[str, str] = os.environ) -> str:
    """The configured format; a value other than `human` or `json` raises `BadLogFormat`."""
    value = environ.get(VARIABLE, "").strip().lower() or "human"
    if value not in FORMATS:
        raise BadLogFormat(f"{VARIABLE}={environ[VARIABLE]!r} is not one of: {', '.join(FORMATS)}")
    return value


def json_logs(environ: Mapping[str, str] = os.environ) -> bool:
    return log_format(environ) == "json"


def set_job(**fields: Any) -> contextvars.Token[dict[str, Any] | None]:
    """Say which job this thread's next lines are about (`reset_job` with the token when it is done)."""
    return _job.set({name: value for name, value in fields.items() if value not in (None, "")})


def add_to_job(**fields: Any) -> None:
    """Add what became known about the job in hand (its attempt, once claimed)."""
    current = _job.get()
    if current is not None:
        current.update(fields)


def reset_job(token: contextvars.Token[dict[str, Any] | None]) -> None:
    _job.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, event (the message), logger, and what is known of the job in hand:
    from the record's `extra`, else from the thread's job (`set_job`); the trace id from the current span too."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "event": record.getMessage(),
            "logger": record.name,
            "pid": record.process,
        }
        job = _job.get() or {}
        for name in JOB_FIELDS:
            value = getattr(record, name, None) or job.get(name)
            if value not in (None, ""):
                entry[name] = str(value) if name != "attempt" else value
        if "trace_id" not in entry:
            from actors import tracing  # light: it imports OpenTelemetry only when tracing is on

            trace_id = tracing.current_trace_id()
            if trace_id:
                entry["trace_id"] = trace_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(environ: Mapping[str, str] = os.environ, *, level: int = logging.INFO) -> str:
    """Set the root logger up in the configured format, unless it already has handlers (then only their
    formatters change to JSON when asked): the format."""
    chosen = log_format(environ)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format=HUMAN_FORMAT)
    if chosen == "json":
        for handler in root.handlers:
            handler.setFormatter(JsonFormatter())
    return chosen
