"""GET /metrics: Prometheus text that parses, intake counters that move with each outcome, ledger gauges that follow
the jobs, and the metrics of every gunicorn worker merged through prometheus_client's multiprocess directory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ledger.database import Database
from tests.conftest import free_port
from tests.e2e.conftest import ROOT, Process, process_env, wait_for_http
from tests.service.conftest import Worker, notification, post


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and labels; parsing fails on anything that is not Prometheus text."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metrics(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    result = client.simulate_get("/metrics")
    assert result.status_code == 200, result.text
    assert result.headers["content-type"].startswith("text/plain; version=0.0.4")
    return scrape(result.text)


def intake(samples, outcome: str) -> float:
    return samples[("wjp_intake_total", (("outcome", outcome),))]


def jobs(samples, status: str) -> float:
    return samples[("wjp_jobs", (("status", status),))]


def test_the_metrics_parse_as_prometheus_text_with_every_series_present_from_the_start(client):
    samples = metrics(client)

    for outcome in ("created", "replayed", "mismatch", "invalid"):
        assert intake(samples, outcome) >= 0
    for status in ("pending", "processing", "retry", "success", "failed", "cancelled"):
        assert jobs(samples, status) == 0
    assert samples[("wjp_ledger_up", ())] == 1
    assert samples[("wjp_oldest_due_job_age_seconds", ())] == 0


def test_intake_counters_move_for_created_replayed_mismatch_and_invalid(client):
    before = metrics(client)
    body = notification()

    post(client, body)
    post(client, body)
    post(client, body)
    post(client, {**body, "message": "another"})
    post(client, notification(channel="pigeon"))
    post(client, "{not json")

    after = metrics(client)
    moved = {o: intake(after, o) - intake(before, o) for o in ("created", "replayed", "mismatch", "invalid")}
    assert moved == {"created": 1, "replayed": 2, "mismatch": 1, "invalid": 2}


def test_a_batchs_items_move_the_intake_counters_each_by_its_outcome(client):
    body = notification()
    post(client, body)
    before = metrics(client)
    items = [body, body, {**body, "message": "another"}, notification(), notification(), notification(channel="pigeon")]

    result = client.simulate_post("/api/notifications/batch", json={"notifications": items})

    assert [r["status"] for r in result.json["results"]] == [200, 200, 422, 202, 202, 400]
    after = metrics(client)
    moved = {o: intake(after, o) - intake(before, o) for o in ("created", "replayed", "mismatch", "invalid")}
    assert moved == {"created": 2, "replayed": 2, "mismatch": 1, "invalid": 1}


def test_status_gauges_follow_the_jobs_through_their_lifecycle(client, database):
    worker = Worker(database)
    first, second, third = (post(client, notification()).json["job_id"] for _ in range(3))
    assert (jobs(metrics(client), "pending"), jobs(metrics(client), "failed")) == (3, 0)

    worker.fail_for_good(first)
    worker.deliver_after_failures(second, 1)
    client.simulate_delete(f"/api/notifications/{third}")

    samples = metrics(client)
    assert {s: jobs(samples, s) for s in ("pending", "failed", "success", "cancelled")} == {
        "pending": 0,
        "failed": 1,
        "success": 1,
        "cancelled": 1,
    }
    assert samples[("wjp_success_attempts_mean", ())] == 2


def test_the_oldest_due_job_age_grows_while_a_job_waits(client):
    post(client, notification())

    assert metrics(client)[("wjp_oldest_due_job_age_seconds", ())] > 0


def test_with_the_ledger_down_metrics_still_answer_and_say_so(client_for, dispatcher):
    client = client_for(Database(f"postgresql://postgres@127.0.0.1:{free_port()}/none"), dispatcher)

    samples = metrics(client)

    assert samples[("wjp_ledger_up", ())] == 0
    assert not [name for name, _ in samples if name == "wjp_jobs"]


def test_metrics_written_by_other_processes_are_merged_from_the_multiprocess_directory(make_client, tmp_path):
    directory = tmp_path / "metrics"
    directory.mkdir()
    # Another process (a worker, say) records an attempt in the shared directory.
    script = textwrap.dedent(
        """
        from actors import metrics
        metrics.observe_attempt("log", None, 0.02)
        metrics.observe_attempt("log", None, 0.03)
        """
    )
    env = process_env(PROMETHEUS_MULTIPROC_DIR=str(directory))
    subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, check=True, timeout=60)

    samples = metrics(make_client(PROMETHEUS_MULTIPROC_DIR=str(directory)))

    assert samples[("wjp_attempts_total", (("channel", "log"), ("outcome", "success")))] == 2
    assert samples[("wjp_delivery_duration_seconds_count", (("channel", "log"),))] == 2
    assert samples[("wjp_ledger_up", ())] == 1


@pytest.mark.slow
def test_wjp_serve_merges_the_counters_of_all_its_gunicorn_workers_even_as_they_are_replaced(
    postgres_db, redis_server_url, queue_name, tmp_path
):
    env = process_env(
        DATABASE_URL=postgres_db.engine.url.render_as_string(hide_password=False),
        REDIS_URL=redis_server_url,
        WJP_QUEUE=queue_name,
        WJP_ADMIN_TOKEN="s3cret",
        TMPDIR=str(tmp_path),
        # Each worker is replaced after a handful of requests, as max_requests does in production.
        GUNICORN_CMD_ARGS="--max-requests 4 --max-requests-jitter 2",
    )
    port = free_port()
    api = Process(["serve", "--port", str(port), "--workers", "3"], env, tmp_path / "api.log")
    try:
        assert_intake_merged_across_workers(api, port, tmp_path)
    finally:
        api.kill()


def wait_until(condition, api: Process) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, api.output()
        time.sleep(0.05)


def assert_intake_merged_across_workers(api: Process, port: int, tmp_path) -> None:
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/healthz", api)

    def create(_: int) -> int:
        request = urllib.request.Request(
            f"{base}/api/notifications",
            data=json.dumps(notification()).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status

    # One after another, each on a new connection, until workers have been replaced: an event-loop worker would
    # accept a burst of concurrent ones alone, and takes a few more after its max_requests before it stops.
    wait_until(lambda: api.output().count("Application startup complete") >= 3, api)
    requests = 0
    while requests < 30 or api.output().count("Booting worker") <= 4:
        assert create(requests) == 202
        requests += 1
        assert requests < 2000, "no worker was replaced"
    scrape_request = urllib.request.Request(f"{base}/metrics", headers={"Authorization": "Bearer s3cret"})
    with urllib.request.urlopen(scrape_request, timeout=10) as answer:
        samples = scrape(answer.read().decode())

    # Each worker wrote its slot's file in the per-run directory made under TMPDIR; the scrape added them up,
    # and the workers that replaced others went on from their files instead of adding new ones.
    assert intake(samples, "created") == requests
    assert jobs(samples, "pending") == requests
    run_dirs = list(tmp_path.glob("wjp-metrics-*"))
    assert [d.name for d in run_dirs] == [f"wjp-metrics-{api.pid}"]
    files = sorted(f.name for f in run_dirs[0].glob("*.db"))
    booted = api.output().count("Booting worker")
    assert all(f.startswith("counter_api-") for f in files), files
    assert 2 <= len(files) <= 4 < booted, (files, booted)
    assert api.terminate() == 0
