"""Traces and JSON logs from real processes: `wjp serve` and `wjp worker` export their spans to a real OTLP/HTTP
receiver, one notification making one trace from its POST to its SUCCESS (through a retry); with
`WJP_LOG_FORMAT=json` every line every process writes is a JSON object."""

from __future__ import annotations

import json
import os
import signal
import time

from tests.conftest import free_port
from tests.e2e.conftest import Process, http, run_wjp, wait_for_http
from tests.e2e.test_processes import ledger_env
from tests.otlp_receiver import ReceivedSpan, otlp_receiver
from tests.webhook_sink import Reply, webhook_sink


def wait_for_job(base: str, job_id: str, status: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http("GET", f"{base}/api/notifications/{job_id}")[1]
        if job["status"] == status:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} is {job['status']}, not {status}")


def json_lines(text: str) -> list[dict]:
    """Every line of `text` as a JSON object (an AssertionError names the first line that is not)."""
    entries = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}\n{text}") from None
        assert isinstance(entry, dict) and {"time", "level", "event"} <= set(entry), line
        entries.append(entry)
    return entries


def one(spans: list[ReceivedSpan], name: str, **attributes: object) -> ReceivedSpan:
    found = [s for s in spans if s.name == name and all(s.attributes.get(k) == v for k, v in attributes.items())]
    assert len(found) == 1, (name, attributes, spans)
    return found[0]


def test_one_notification_is_one_trace_from_post_to_success_and_every_log_line_is_json(
    postgres_db, redis_server_url, queue_name, tmp_path, processes
):
    with otlp_receiver() as receiver, webhook_sink([Reply(503), Reply(200)]) as sink:
        env = ledger_env(
            postgres_db, redis_server_url, queue_name, tmp_path,
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_BSP_SCHEDULE_DELAY="100",
            WJP_LOG_FORMAT="json", WJP_BACKOFF_INITIAL="0.2", WJP_BACKOFF_JITTER="0",
        )  # fmt: skip
        migrated = run_wjp(["migrate"], env)
        assert migrated.returncode == 0, migrated.stderr
        json_lines(migrated.stderr)
        port = free_port()
        api = Process(["serve", "--port", str(port), "--workers", "1"], env, tmp_path / "api.log")
        worker = Process(["worker", "--processes", "1", "--threads", "2"], env, tmp_path / "worker.log")
        processes.extend([api, worker])
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/healthz", api)

        status, created = http(
            "POST", f"{base}/api/notifications",
            {"channel": "webhook", "recipient": sink.url, "message": "hi", "idempotency_key": "traced"},
        )  # fmt: skip
        assert status == 202, created
        job_id = created["job_id"]
        job = wait_for_job(base, job_id, "SUCCESS")
        assert job["attempts"] == 2

        def both_attempts(spans: list[ReceivedSpan]) -> bool:
            ours = [s.name for s in spans if s.attributes.get("wjp.job_id") == job_id]
            return all(ours.count(name) == 2 for name in ("wjp.process", "wjp.claim", "wjp.deliver", "wjp.enqueue"))

        # A message's span ends after its attempt's, perhaps in the exporter's next batch: wait for all of them.
        spans = receiver.wait_for(both_attempts)
        post = one(spans, "POST /api/notifications")
        trace_id = post.trace_id
        # Every span about the job but the GETs that read it (their own traces) is in the POST's trace.
        assert {s.trace_id for s in spans if s.attributes.get("wjp.job_id") == job_id and s.kind != "SERVER"} == {
            trace_id
        }
        trace = [s for s in spans if s.trace_id == trace_id]
        assert post.kind == "SERVER" and post.parent_id == "" and post.service == "wjp-api"
        assert post.attributes["http.response.status_code"] == 202 and post.attributes["wjp.job_id"] == job_id
        assert one(trace, "wjp.ledger.write").parent_id == post.span_id
        first_send = one(trace, "wjp.enqueue", **{"wjp.dispatch_seq": 1})
        assert first_send.parent_id == post.span_id and first_send.kind == "PRODUCER"

        deliveries = sorted((s for s in trace if s.name == "wjp.deliver"), key=lambda s: s.attributes["wjp.attempt"])
        assert [d.attributes["wjp.outcome"] for d in deliveries] == ["transient_error", "success"]
        assert [d.error for d in deliveries] == [True, False]
        by_id = {s.span_id: s for s in trace}
        first, second = (by_id[d.parent_id] for d in deliveries)
        for delivery, process in zip(deliveries, (first, second), strict=True):
            assert delivery.service == "wjp-worker"
            assert delivery.attributes["wjp.channel"] == "webhook"
            assert delivery.attributes["wjp.destination"] == job["destination"]
            assert process.name == "wjp.process" and process.kind == "CONSUMER"
            assert process.attributes["wjp.job_id"] == job_id
            claim = [s for s in trace if s.name == "wjp.claim" and s.parent_id == process.span_id]
            assert [c.attributes["wjp.job_id"] for c in claim] == [job_id]
        assert first.parent_id == first_send.span_id
        # The retry is sent from within the first attempt's message, and its message continues the trace.
        retry_send = by_id[second.parent_id]
        assert retry_send.name == "wjp.enqueue" and retry_send.parent_id == first.span_id

        # Dramatiq's reload (SIGHUP) brings the worker back through the same start, logging JSON.
        booted = worker.output().count("is booting up")
        os.kill(worker.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while worker.output().count("is booting up") == booted and time.monotonic() < deadline:
            time.sleep(0.1)
        status, logged = http(
            "POST", f"{base}/api/notifications",
            {"channel": "log", "recipient": "ops", "message": "hello", "idempotency_key": "logged"},
        )  # fmt: skip
        wait_for_job(base, logged["job_id"], "SUCCESS")
        assert api.terminate() == 0 and worker.terminate() == 0

        reconciled = run_wjp(["reconcile"], env)
        assert reconciled.returncode == 0, reconciled.stderr
        json_lines(reconciled.stderr)
        assert json.loads(reconciled.stdout)["redispatched"] == 0  # its report, on stdout, is JSON as ever
        failed = run_wjp(["reconcile"], {**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
        assert failed.returncode == 1
        (stop,) = json_lines(failed.stderr)
        assert stop["level"] == "ERROR" and "Redis" in stop["event"]

    api_lines, worker_lines = json_lines(api.output()), json_lines(worker.output())
    assert any(e["logger"] == "gunicorn.error" for e in api_lines)
    assert not any(e["logger"] == "gunicorn.access" for e in api_lines)  # off unless asked for, as in human format
    assert sum(e["event"].startswith("Dramatiq") and "booting up" in e["event"] for e in worker_lines) == 2
    retried = [e for e in worker_lines if e["event"].startswith("🔁") and e.get("job_id") == job_id]
    assert retried and retried[0]["attempt"] == 1 and retried[0]["trace_id"] == trace_id
    assert retried[0]["destination"] == job["destination"]
    assert any(e["event"].startswith("✅") and e.get("job_id") == job_id and e["attempt"] == 2 for e in worker_lines)
    (delivered,) = [e for e in worker_lines if e["logger"] == "wjp.channels.log"]
    assert delivered["job_id"] == logged["job_id"] and delivered["attempt"] == 1 and len(delivered["trace_id"]) == 32
