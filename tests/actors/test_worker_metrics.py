"""Worker-side metrics: attempts by channel and outcome and delivery latency from a real worker in this process,
reconciler actions from a real pass, and, across processes, what `wjp worker` writes to its multiprocess directory
and serves on its own port through Dramatiq's Prometheus exporter."""

from __future__ import annotations

import time
import urllib.request
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from ledger import queries
from ledger.states import Status
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch
from tests.actors.conftest import make_reconciler, running_worker, submit, wait_for_status
from tests.conftest import free_port
from tests.e2e.conftest import Process, process_env
from tests.webhook_sink import Reply, webhook_sink


def attempts(channel: str, outcome: str, registry: CollectorRegistry = REGISTRY) -> float:
    return registry.get_sample_value("wjp_attempts_total", {"channel": channel, "outcome": outcome}) or 0.0


def latency_count(channel: str, registry: CollectorRegistry = REGISTRY) -> float:
    return registry.get_sample_value("wjp_delivery_duration_seconds_count", {"channel": channel}) or 0.0


def slowest_bucket(channel: str) -> float:
    """The histogram's last bucket (+Inf), which every timed delivery lands in."""
    labels = {"channel": channel, "le": "+Inf"}
    return REGISTRY.get_sample_value("wjp_delivery_duration_seconds_bucket", labels) or 0.0


def reconciler_actions(action: str) -> float:
    return REGISTRY.get_sample_value("wjp_reconciler_actions_total", {"action": action}) or 0.0


def test_a_real_worker_counts_attempts_by_channel_and_outcome_and_times_each_delivery(
    make_settings, database, dispatcher
):
    settings = make_settings(WJP_MAX_ATTEMPTS="3", WJP_BACKOFF_INITIAL="0.05", WJP_BACKOFF_JITTER="0")
    before = {
        (channel, outcome): attempts(channel, outcome)
        for channel in ("log", "webhook")
        for outcome in ("success", "transient_error", "permanent_error")
    }
    webhook_latency = latency_count("webhook")
    webhook_slowest = slowest_bucket("webhook")

    # One webhook job: 503, then 200; another: 404 at once. One log job: success.
    with webhook_sink([Reply(503), Reply(200), Reply(404)]) as sink, running_worker(settings, database):
        retried = submit(database, dispatcher, settings, channel="webhook", recipient=sink.url)
        assert wait_for_status(database, retried).status is Status.SUCCESS
        refused = submit(database, dispatcher, settings, channel="webhook", recipient=sink.url)
        assert wait_for_status(database, refused).status is Status.FAILED
        logged = submit(database, dispatcher, settings, channel="log", recipient="ops")
        assert wait_for_status(database, logged).status is Status.SUCCESS

    moved = {key: attempts(*key) - value for key, value in before.items()}
    assert moved == {
        ("log", "success"): 1,
        ("log", "transient_error"): 0,
        ("log", "permanent_error"): 0,
        ("webhook", "success"): 1,
        ("webhook", "transient_error"): 1,
        ("webhook", "permanent_error"): 1,
    }
    assert latency_count("webhook") - webhook_latency == 3
    assert slowest_bucket("webhook") - webhook_slowest == 3


def test_a_reconciler_pass_counts_the_jobs_it_redispatched(make_settings, database, dispatcher):
    settings = make_settings(WJP_RECONCILE_GRACE="0")
    lost = submit(database, None, settings)  # recorded, but its message never reached Redis
    before = reconciler_actions("redispatched")

    later = make_reconciler(settings, database, dispatcher, clock=lambda: utcnow() + timedelta(seconds=1))
    report = later.run_once()

    assert report.redispatched == 1
    assert reconciler_actions("redispatched") - before == 1
    # What was counted is that job's new message, now in Redis
    state = database.run(lambda conn: queries.dispatch_state(conn, lost))
    assert state.dispatch_seq == 2
    assert dispatcher.missing([Dispatch(lost, state.dispatch_seq, state.next_attempt_at)]) == []


@pytest.mark.slow
def test_wjp_worker_processes_write_their_metrics_to_the_multiprocess_directory_and_serve_them(
    make_settings, database, dispatcher, redis_server_url, queue_name, tmp_path
):
    directory, port = tmp_path / "metrics", free_port()
    env = process_env(
        DATABASE_URL=database.engine.url.render_as_string(hide_password=False),
        REDIS_URL=redis_server_url,
        WJP_QUEUE=queue_name,
        PROMETHEUS_MULTIPROC_DIR=str(directory),
        WJP_WORKER_METRICS_PORT=str(port),
        dramatiq_prom_host="127.0.0.1",
    )
    worker = Process(["worker", "--processes", "2", "--threads", "2"], env, tmp_path / "worker.log")
    try:
        jobs = [submit(database, dispatcher, make_settings()) for _ in range(6)]
        for job_id in jobs:
            assert wait_for_status(database, job_id, timeout=60).status is Status.SUCCESS, worker.output()

        # Read back as a scrape would: every worker process's file, merged.
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(directory))
        assert attempts("log", "success", registry) == 6
        assert latency_count("log", registry) == 6

        served = _scrape_until(f"http://127.0.0.1:{port}/metrics", "wjp_attempts_total", worker)
        assert served[("wjp_attempts_total", (("channel", "log"), ("outcome", "success")))] == 6
        assert any(name == "dramatiq_messages_total" for name, _ in served)
        assert worker.terminate(timeout=60) == 0
    finally:
        worker.kill()


def _scrape_until(url: str, name: str, process: Process, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                text = answer.read().decode()
            if name in text:
                return {
                    (sample.name, tuple(sorted(sample.labels.items()))): sample.value
                    for family in text_string_to_metric_families(text)
                    for sample in family.samples
                }
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not serve {name} in {timeout}s:\n{process.output()}")
        time.sleep(0.2)
