"""`make bench`, destinations (issue 19): the noisy neighbour and the cost of flow control, each as ratios of runs
made back to back in one invocation. Called from bench.run; see bench/README.md, "Destinations".

noisy: healthy webhook jobs posted open loop, alone, then with 10 % more traffic to a black-holed receiver and
10 % to one answering 429; the healthy jobs' throughput and POST → SUCCESS p99 of the second run over the first.
flow_cost: the `log` and webhook drains with WJP_FLOW_CONTROL=true over the same with false, in alternating pairs.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from actors.flow.gate import DEFAULT_PREFIX
from bench import common
from bench.common import PYTHON, QUICK, REDIS_URL, Service, bench_connect, log, median, pct, target

#: The share of the machine's cores the healthy stream keeps busy alone (bench/README.md says why half).
NOISY_MACHINE_SHARE = 0.5
#: The calibration: the alone mix at two rates inside any machine's capacity, then at the rate their line says keeps
#: the share busy, and the rate of the line through the last two (a secant step: a run's cores are not proportional
#: to its rate, an idle API and worker cost some).
CALIBRATION_RATES = (100.0, 200.0)
CALIBRATION_SECONDS = 6.0
#: What a healthy job costs the machine: every process of the run, the load generator's too (not PostgreSQL's other
#: processes, where the machine's other users' backends count).
MACHINE_GROUPS = ("gunicorn", "worker", "sink_ok", "sink_blackhole", "sink_throttle", "postgres_bench_backends",
                  "redis", "load_generator")  # fmt: skip
#: Extra traffic of each bad receiver, as a share of the healthy rate.
NOISE_SHARE = 0.1
NOISY_SECONDS = float(os.environ.get("BENCH_NOISY_SECONDS", "8" if QUICK else "20"))
NOISY_WARMUP = 2.0
#: Most seconds to wait, after the last POST, for the healthy jobs: those still unfinished count with the latency
#: they had reached then (a lower bound), so a stalled run yields a finite p99 that fails its target.
NOISY_GRACE = float(os.environ.get("BENCH_NOISY_GRACE", "15" if QUICK else "30"))
FLOW_COST_PAIRS = int(os.environ.get("BENCH_FLOW_COST_PAIRS", "1" if QUICK else "2"))
RECEIVERS = ("ok", "blackhole", "throttle")
HEALTHY = "noisy.h"  # the idempotency keys of the measured healthy jobs: noisy.h-<i> (warm-up: noisy.hw-<i>)


@dataclass(frozen=True)
class Harness:
    """What bench.run lends these phases: its ledger reset, servers and drains, as its own phases use them."""

    reset_ledger: Callable[[], None]
    api_server: Callable[..., tuple[Service, int]]
    worker: Callable[..., Service]
    drain: Callable[..., dict]
    webhook_drain: Callable[..., dict]
    drain_jobs: int


def run_phases(phases: list[str], harness: Harness) -> dict:
    out: dict = {}
    if "flow_cost" in phases:
        out["flow_cost"] = phase_flow_cost(harness)
    if "noisy" in phases:
        out["noisy"] = phase_noisy(harness, *noisy_rate(harness))
    return out


# ------------------------------------------------------------------------------------------------ flow_cost


def _flow(setting: str) -> dict[str, str]:
    return {"WJP_FLOW_CONTROL": "true" if setting == "on" else "false"}


def phase_flow_cost(h: Harness) -> dict:
    """Each drain with flow control on and off, back to back, the order swapped every pair against drift."""
    log(f"flow_cost: {FLOW_COST_PAIRS} pair(s) × (log drain, webhook drain) of {h.drain_jobs} jobs, "
        "WJP_FLOW_CONTROL=true and false in alternating order")  # fmt: skip
    runs: dict[str, dict[str, list[dict]]] = {kind: {"on": [], "off": []} for kind in ("log", "webhook")}
    for pair in range(FLOW_COST_PAIRS):
        order = ("on", "off") if pair % 2 == 0 else ("off", "on")
        for setting in order:
            runs["log"][setting].append(h.drain(f"flow_cost_log_{setting}", h.drain_jobs, "log", "bench-user",
                                                **_flow(setting)))  # fmt: skip
        for setting in order:
            runs["webhook"][setting].append(h.webhook_drain(f"flow_cost_webhook_{setting}", **_flow(setting)))
    out: dict = {"pairs": FLOW_COST_PAIRS, "jobs": h.drain_jobs}
    for kind, by_setting in runs.items():
        pairs = list(zip(by_setting["on"], by_setting["off"], strict=True))
        ratios = [_ratio(on["jobs_per_s"], off["jobs_per_s"]) for on, off in pairs]
        # CPU per job moves far less with the machine's other users than the rates do (bench/README.md, "Noise").
        cpu = [_ratio(on["worker_cpu_us_per_job"], off["worker_cpu_us_per_job"]) for on, off in pairs]
        out[kind] = {
            "ratio": round(median(ratios), 3),
            "ratios_per_pair": [round(x, 3) for x in ratios],
            "cpu_per_job_ratio": round(median(cpu), 3),
            **{f"{figure}_{s}": [r[figure] for r in by_setting[s]]
               for figure in ("jobs_per_s", "worker_cpu_us_per_job") for s in ("on", "off")},
            **{f"other_users_cores_{s}": [r["cores"].get("unaccounted_other_users") for r in by_setting[s]]
               for s in ("on", "off")},
            "runs": by_setting,
        }  # fmt: skip
        log(f"  flow_cost {kind}: on/off {out[kind]['ratios_per_pair']} (jobs/s on {out[kind]['jobs_per_s_on']}, "
            f"off {out[kind]['jobs_per_s_off']}); worker CPU per job on/off {out[kind]['cpu_per_job_ratio']}")
    return out


def _ratio(a: float | None, b: float | None) -> float:
    return a / b if a and b else float("nan")


# ---------------------------------------------------------------------------------------------------- noisy


def noisy_rate(h: Harness) -> tuple[float, str]:
    """The healthy rate and where it comes from: BENCH_NOISY_RATE, else the rate at which the alone mix keeps
    NOISY_MACHINE_SHARE of the machine's cores busy, found by calibration runs (CALIBRATION_RATES)."""
    if os.environ.get("BENCH_NOISY_RATE"):
        return float(os.environ["BENCH_NOISY_RATE"]), "BENCH_NOISY_RATE"
    machine = os.cpu_count() or 1
    wanted = NOISY_MACHINE_SHARE * machine
    points = [(rate, _machine_cores(h, rate)) for rate in CALIBRATION_RATES]
    estimate = _secant(points, wanted)
    points.append((estimate, _machine_cores(h, estimate)))
    rate = round(_secant(points, wanted), 1)
    measured = ", ".join(f"{cores:.2f} at {r:g}/s" for r, cores in points)
    return rate, f"{wanted:g} of {machine} cores busy; calibration: {measured}"


def _machine_cores(h: Harness, rate: float) -> float:
    run = noisy_run(h, rate, with_noise=False, seconds=CALIBRATION_SECONDS, label=f"calibration-{rate:g}")
    return sum(run["cores"].get(group, 0.0) for group in MACHINE_GROUPS)


def _secant(points: list[tuple[float, float]], wanted: float) -> float:
    """The rate at which the line through the last two (rate, cores) points reaches `wanted` cores, kept within
    half and three times the last rate (a flat or falling line: three times)."""
    (r0, c0), (r1, c1) = points[-2:]
    slope = (c1 - c0) / (r1 - r0)
    rate = r1 + (wanted - c1) / slope if slope > 0 else 3 * r1
    return round(min(max(rate, r1 / 2), 3 * r1), 1)


def phase_noisy(h: Harness, rate: float, basis: str) -> dict:
    log(f"noisy: healthy webhooks at {rate:g}/s ({basis}) for {NOISY_SECONDS:g}s, alone, then with "
        f"{NOISE_SHARE:.0%} more to a black hole and {NOISE_SHARE:.0%} to a 429 receiver")  # fmt: skip
    alone = noisy_run(h, rate, with_noise=False)
    noise = noisy_run(h, rate, with_noise=True)

    def ratio(key: str) -> float | None:
        a, b = alone["healthy"][key], noise["healthy"][key]
        return round(b / a, 3) if a and b is not None and b == b else None

    return {
        "rate": rate,
        "rate_basis": basis,
        "noise_rate_each": round(rate * NOISE_SHARE, 1),
        "seconds": NOISY_SECONDS,
        "grace_s": NOISY_GRACE,
        "healthy_throughput_ratio": ratio("throughput_per_s"),
        "healthy_p99_ratio": ratio("p99_ms"),
        "alone": alone,
        "with_noise": noise,
    }


def wait_listening(port: int, timeout: float = 20.0) -> None:
    """Wait until 127.0.0.1:port accepts connections (the black hole never answers, so no HTTP probe)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} within {timeout:g}s")


def noisy_run(
    h: Harness, rate: float, *, with_noise: bool, seconds: float = NOISY_SECONDS, label: str | None = None
) -> dict:
    label = label or ("with_noise" if with_noise else "alone")
    h.reset_ledger()
    ports = {mode: common.free_port() for mode in RECEIVERS}
    sinks = {mode: common.start(f"noisy-sink-{mode}", [PYTHON, "-m", "bench.sink", str(port), "1", mode])
             for mode, port in ports.items()}  # fmt: skip
    env = {"WJP_WEBHOOK_ALLOW_PRIVATE": "true"}  # the receivers are on 127.0.0.1
    with common.running(*sinks.values()):
        for port in ports.values():
            wait_listening(port)
        api, api_port = h.api_server(f"noisy-api-{label}", **env)
        work = h.worker(f"worker-noisy-{label}", **env)
        with common.running(api, work):
            time.sleep(3)  # the worker's processes are up and polling
            # Stream tags: h(ealthy), b(lack hole), t(hrottle); each on its own port, so its own destination.
            noise = [("b", "blackhole", NOISE_SHARE), ("t", "throttle", NOISE_SHARE)] if with_noise else []
            mix = [("h", "ok", 1.0), *noise]
            streams = [{"tag": tag, "share": share, "channel": "webhook", "recipient": f"http://127.0.0.1:{ports[mode]}/h"}
                       for tag, mode, share in mix]  # fmt: skip
            argv = [PYTHON, "-m", "bench.openloop", str(api_port), str(rate), str(seconds), "noisy",
                    str(NOISY_WARMUP), str(common.LOGS / f"noisy-{label}-sent.json"), json.dumps(streams)]  # fmt: skip
            groups = {"gunicorn": api.tree(), "worker": work.tree()} | {f"sink_{m}": s.tree() for m, s in sinks.items()}
            client, cores = common.run_open_loop(argv, groups)
            with bench_connect() as conn:
                waited = wait_for_healthy(conn)
                healthy = healthy_figures(conn)
                streams_end = stream_outcomes(conn)
            gate_keys = sum(1 for _ in redis.Redis.from_url(REDIS_URL).scan_iter(match=f"{DEFAULT_PREFIX}*"))
    received = {mode: sink_counts(sink) for mode, sink in sinks.items()}
    out = {
        "healthy": {**healthy, "waited_after_last_post_s": waited},
        "streams": streams_end,
        "receivers": received,
        "client": client,
        "cores": cores,
        # Whether the workers touched the flow-control state in Redis at all (0 before they apply it).
        "gate_keys_in_redis": gate_keys,
    }
    log(f"  noisy {label}: healthy {healthy['throughput_per_s']}/s, p50 {healthy['p50_ms']} ms, p99 "
        f"{healthy['p99_ms']} ms, {healthy['unfinished']} unfinished after {waited} s; streams {streams_end}; "
        f"receivers {received}; cores {cores}")  # fmt: skip
    return out


def wait_for_healthy(conn) -> float:  # type: ignore[no-untyped-def]
    """Seconds waited (at most NOISY_GRACE) until every measured healthy job is finished."""
    started = time.monotonic()
    while time.monotonic() - started < NOISY_GRACE:
        left = conn.execute(
            "SELECT count(*) FROM jobs "
            "WHERE idempotency_key LIKE %s AND status NOT IN ('SUCCESS', 'FAILED', 'CANCELLED')",
            (f"{HEALTHY}-%",),
        ).fetchone()[0]
        if left == 0:
            break
        time.sleep(0.2)
    return round(time.monotonic() - started, 1)


def healthy_figures(conn) -> dict:  # type: ignore[no-untyped-def]
    """Throughput: healthy SUCCESS per second while the measured POSTs were made (created_at of the first to the
    last). Latency: created_at → completed_at of the measured healthy jobs (created_at is the API's clock before its
    INSERT); a job not finished by now counts with the latency it has reached."""
    rows = conn.execute(
        "SELECT extract(epoch FROM coalesce(completed_at, clock_timestamp()) - created_at) * 1000, status "
        "FROM jobs WHERE idempotency_key LIKE %s",
        (f"{HEALTHY}-%",),
    ).fetchall()
    done, window = conn.execute(
        "WITH w AS (SELECT min(created_at) AS t0, max(created_at) AS t1 FROM jobs WHERE idempotency_key LIKE %s) "
        "SELECT count(*) FILTER (WHERE j.status = 'SUCCESS' AND j.completed_at BETWEEN w.t0 AND w.t1), "
        "       extract(epoch FROM max(w.t1 - w.t0)) "
        "FROM jobs j CROSS JOIN w WHERE j.idempotency_key LIKE %s",
        (f"{HEALTHY}-%", f"{HEALTHY}%"),
    ).fetchone()
    latencies = [float(ms) for ms, _ in rows]
    return {
        "jobs": len(rows),
        "unfinished": sum(1 for _, status in rows if status != "SUCCESS"),
        "throughput_per_s": round(done / float(window), 1) if window else None,
        "window_s": round(float(window or 0), 2),
        "p50_ms": round(pct(latencies, 50), 2),
        "p99_ms": round(pct(latencies, 99), 2),
        "max_ms": round(max(latencies), 2) if latencies else None,
    }


def stream_outcomes(conn) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    """Per stream (warm-up apart): jobs by status and attempts made, when the run ended."""
    rows = conn.execute(
        "SELECT split_part(idempotency_key, '-', 1), status, count(*), sum(attempts) FROM jobs "
        "WHERE idempotency_key LIKE 'noisy.%%' GROUP BY 1, 2 ORDER BY 1, 2"
    ).fetchall()
    out: dict[str, dict] = {}
    for stream, status, count, attempts in rows:
        entry = out.setdefault(stream, {"attempts": 0})
        entry[status] = int(count)
        entry["attempts"] += int(attempts or 0)
    return out


def sink_counts(sink: Service) -> dict[str, int] | None:
    """What a stopped receiver counted: requests received and answered."""
    found = re.findall(r"received=(\d+) served=(\d+)", sink.log_path.read_text())
    return {"received": int(found[-1][0]), "answered": int(found[-1][1])} if found else None


# ------------------------------------------------------------------------------------------------ reporting


def summary(res: dict) -> dict:
    """The top-level fields of latest.json for these phases, and their targets."""
    noisy, cost = res.get("noisy") or {}, res.get("flow_cost") or {}
    drains = {kind: cost.get(kind) or {} for kind in ("log", "webhook")}

    def healthy(run: str) -> dict:
        figures = (noisy.get(run) or {}).get("healthy") or {}
        return {k: figures.get(k) for k in ("throughput_per_s", "p50_ms", "p99_ms", "unfinished")}

    return {
        "noisy": {
            "rate": noisy.get("rate"),
            "healthy_throughput_ratio": noisy.get("healthy_throughput_ratio"),
            "healthy_p99_ratio": noisy.get("healthy_p99_ratio"),
            "alone": healthy("alone"),
            "with_noise": healthy("with_noise"),
        },
        "flow_cost": {
            **{f"{kind}_ratio": drains[kind].get("ratio") for kind in drains},
            **{f"{kind}_cpu_per_job_ratio": drains[kind].get("cpu_per_job_ratio") for kind in drains},
            **{f"{kind}_jobs_per_s": {s: _median(drains[kind].get(f"jobs_per_s_{s}")) for s in ("on", "off")}
               for kind in drains},
        },
        "targets": {
            "noisy_healthy_throughput": target(noisy.get("healthy_throughput_ratio"), ">=", 0.8),
            "noisy_healthy_p99": target(noisy.get("healthy_p99_ratio"), "<=", 2.0),
            "flow_cost_log": target(drains["log"].get("ratio"), ">=", 0.9),
            "flow_cost_webhook": target(drains["webhook"].get("ratio"), ">=", 0.9),
        },
    }


def table(res: dict) -> list[str]:
    """Rows for latest.md: the two phases' figures and targets."""
    fmt = lambda v, nd=0: "–" if v is None else f"{v:,.{nd}f}"  # noqa: E731
    n, c, t = res["noisy"], res["flow_cost"], res["targets"]
    a, w = n["alone"], n["with_noise"]
    return [
        "",
        "Destinations (flow control):",
        "",
        "| figure | alone / off | with noise / on | ratio | target | pass |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| healthy webhooks at {fmt(n['rate'])}/s (+ 2 × 10 % to a black hole and a 429 receiver): SUCCESS/s | "
        f"{fmt(a['throughput_per_s'], 1)} | {fmt(w['throughput_per_s'], 1)} | "
        f"{fmt(n['healthy_throughput_ratio'], 2)} | ≥ 0.8 | {t['noisy_healthy_throughput']['pass']} |",
        f"| healthy POST → SUCCESS p50 / p99 ms | {fmt(a['p50_ms'], 1)} / {fmt(a['p99_ms'], 1)} | "
        f"{fmt(w['p50_ms'], 1)} / {fmt(w['p99_ms'], 1)} | {fmt(n['healthy_p99_ratio'], 2)} | p99 ≤ 2.0 × | "
        f"{t['noisy_healthy_p99']['pass']} |",
    ] + [
        f"| {name} drain jobs/s, flow control off / on (worker CPU per job on / off: "
        f"{fmt(c[f'{kind}_cpu_per_job_ratio'], 2)}) | {fmt(c[f'{kind}_jobs_per_s']['off'])} | "
        f"{fmt(c[f'{kind}_jobs_per_s']['on'])} | {fmt(c[f'{kind}_ratio'], 2)} | ≥ 0.9 | "
        f"{t[f'flow_cost_{kind}']['pass']} |"
        for kind, name in (("log", "`log`"), ("webhook", "webhook"))
    ]


def _median(values: list[float] | None) -> float | None:
    return round(median(values), 1) if values else None
