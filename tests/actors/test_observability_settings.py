"""The settings of traces and log lines: which `OTEL_*` values turn tracing on, and the bad values (of those and of
`WJP_LOG_FORMAT`) that stop a command with one line naming the variable."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from actors import log_format, tracing
from actors.settings import SettingsError
from service import cli


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "wjp"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://collector/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_on_only_when_an_otlp_exporter_is_asked_for(environ, on):
    assert tracing.configured(environ) is on


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
         "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
         "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
    ],
)  # fmt: skip
def test_a_value_tracing_cannot_honour_names_its_variable(environ, named):
    with pytest.raises(SettingsError, match=named):
        tracing.configured(environ)


@pytest.mark.parametrize(("variable", "value"), [("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"), ("WJP_LOG_FORMAT", "xml")])
def test_a_bad_value_stops_a_command_with_one_line_naming_it(variable, value, monkeypatch, capsys):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    monkeypatch.setenv(variable, value)
    assert cli.main(["reconcile"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and variable in err and "Traceback" not in err


def test_the_log_format_is_human_unless_json_is_asked_for():
    assert log_format.log_format({}) == "human"
    assert log_format.log_format({"WJP_LOG_FORMAT": " JSON "}) == "json"
    with pytest.raises(log_format.BadLogFormat, match="WJP_LOG_FORMAT"):
        log_format.log_format({"WJP_LOG_FORMAT": "logfmt"})


def test_a_json_line_says_what_is_known_of_the_job_in_hand():
    formatter = log_format.JsonFormatter()

    def line(message: str, **extra: object) -> dict:
        record = logging.LogRecord("wjp.worker", logging.WARNING, __file__, 1, message, (), None)
        record.__dict__.update(extra)
        return json.loads(formatter.format(record))

    assert set(line("no job")) == {"time", "level", "event", "logger", "pid"}
    token = log_format.set_job(job_id="j1", destination="webhook:example.com", trace_id="ab" * 16)
    try:
        log_format.add_to_job(attempt=3)
        entry = line("retry in 2s\nnext line")
    finally:
        log_format.reset_job(token)
    assert entry["event"] == "retry in 2s\nnext line" and entry["level"] == "WARNING"
    assert (entry["job_id"], entry["attempt"], entry["destination"], entry["trace_id"]) == (
        "j1", 3, "webhook:example.com", "ab" * 16,
    )  # fmt: skip
    assert line("written", job_id="j2", attempt=1)["job_id"] == "j2"
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("wjp", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "ValueError: boom" in json.loads(formatter.format(record))["exception"]
