"""The sustainable-rate phase of `make bench` (bench/sustainable.py): its verdict on a trial and its search, on
made-up trials (the phase itself runs real servers and is measured by `make bench`, not here)."""

from __future__ import annotations

from bench import sustainable

RATE = 200.0
SECONDS = 10.0
T0 = 1_700_000_000.0


def _trial(*, admit_rate: float = RATE, finish_rate: float | None = None, service_s: float = 0.02,
           answered: int | None = None) -> tuple[dict[str, float], list, dict]:  # fmt: skip
    """POSTs started at RATE for SECONDS; the API creates job i at `admit_rate`, and the workers finish each one
    `service_s` after its creation or, with `finish_rate`, one after another at that rate."""
    n = int(RATE * SECONDS)
    sent = {f"k-{i}": T0 + i / RATE for i in range(n)}
    rows = []
    for i in range(n):
        created = T0 + i / admit_rate + 0.003
        completed = created + service_s if finish_rate is None else max(created + service_s, T0 + i / finish_rate)
        rows.append((f"k-{i}", created, completed))
    client = {"sent": n, "statuses": {"202": n if answered is None else answered}}
    return sent, rows, client


def _judge(sent: dict[str, float], rows: list, client: dict) -> dict:
    return sustainable.judge(RATE, sent, rows, T0 + SECONDS + 5, client)


def test_a_trial_whose_workers_keep_up_is_flat() -> None:
    verdict = _judge(*_trial())
    assert verdict["flat"], verdict
    assert verdict["p50_ms"] == 20.0


def test_workers_that_fall_behind_by_a_tenth_make_a_trial_not_flat() -> None:
    verdict = _judge(*_trial(finish_rate=RATE * 0.9))
    assert not verdict["flat"]
    assert verdict["backlog_growth_share"] > 1 - sustainable.KEEP_UP


def test_a_standing_queue_that_no_longer_grows_makes_a_trial_not_flat() -> None:
    verdict = _judge(*_trial(service_s=0.5))  # every job waits half a second: a queue built before the window
    assert not verdict["flat"]
    assert abs(verdict["backlog_growth_share"]) < 1 - sustainable.KEEP_UP
    assert verdict["backlog_end"] > verdict["backlog_allowed"]


def test_an_api_that_admits_less_than_is_offered_makes_a_trial_not_flat() -> None:
    verdict = _judge(*_trial(admit_rate=RATE * 0.9))
    assert not verdict["flat"]
    assert verdict["admitted_share"] < sustainable.KEEP_UP


def test_an_answer_other_than_202_makes_a_trial_not_flat() -> None:
    sent, rows, client = _trial()
    client["statuses"] = {"202": client["sent"] - 1, "503": 1}
    assert not _judge(sent, rows, client)["flat"]


def test_jobs_never_finished_count_with_the_latency_they_reached() -> None:
    sent, rows, client = _trial()
    rows[-1] = (rows[-1][0], rows[-1][1], None)
    verdict = _judge(sent, rows, client)
    assert verdict["unfinished"] == 1
    assert verdict["p99_ms"] >= 20.0


def test_the_split_at_the_claim_leaves_out_jobs_never_claimed_or_never_finished() -> None:
    rows = [("k-0", T0, T0 + 0.030, T0 + 0.010), ("k-1", T0, None, T0 + 0.010), ("k-2", T0, None, None)]
    split = sustainable.split(rows)
    assert (split["created_to_claimed_p50"], split["claimed_to_completed_p50"]) == (10.0, 20.0)


def test_the_search_steps_up_then_bisects_to_just_below_the_limit() -> None:
    tried: list[float] = []

    def run_trial(rate: float) -> dict:
        tried.append(rate)
        return {"rate": rate, "flat": rate <= 400}

    found, trials = sustainable.search(run_trial)
    assert found is not None and found <= 400
    lowest_failed = min(rate for rate in tried if rate > 400)
    assert tried[:4] == [150, 225, 338, 507]
    assert lowest_failed / found < 1.5
    assert len(trials) == len(tried)


def test_the_search_steps_down_when_the_first_rate_is_too_high() -> None:
    found, _ = sustainable.search(lambda rate: {"rate": rate, "flat": rate <= 50})
    assert found is not None and found <= 50 < found * sustainable.STEP


def test_the_search_reports_no_rate_when_no_trial_is_flat() -> None:
    found, trials = sustainable.search(lambda rate: {"rate": rate, "flat": False})
    assert found is None
    assert len(trials) == sustainable.MAX_STEPS


def test_the_rate_is_judged_against_the_reference_measured_in_the_same_run_when_there_is_one() -> None:
    half = {"rate": 700.0, "p50_ms": 10.0, "p99_ms": 30.0}
    measured = {"sustainable": {"sustainable_rate": 1400.0, "at_half": half, "today": {"rate": 1000.0}}}
    fixed = {"sustainable": {"sustainable_rate": 1400.0, "at_half": half, "today": None}}

    with_reference, without = sustainable.summary(measured), sustainable.summary(fixed)

    assert with_reference["targets"]["sustainable_vs_today"]["measured"] == 1.4
    assert with_reference["targets"]["sustainable_vs_today"]["pass"] is False
    assert with_reference["sustainable"]["today_measured"] is True
    assert without["targets"]["sustainable_vs_today"]["today"] == sustainable.TODAY_RATE
    assert without["sustainable"]["today_measured"] is False


def test_the_end_to_end_figures_and_their_target_are_those_at_half_the_sustainable_rate() -> None:
    half = {"rate": 700.0, "p50_ms": 10.0, "p99_ms": 60.0, "producer_view_p99_ms": 64.0}
    figures = sustainable.summary({"sustainable": {"sustainable_rate": 1400.0, "at_half": half, "today": None}})

    assert figures["e2e"] == {"p50_ms": 10.0, "p99_ms": 60.0, "rate": 700.0, "from_post_start_p99_ms": 64.0}
    assert figures["targets"]["e2e_p99_ms"]["measured"] == 60.0
    assert figures["targets"]["e2e_p99_ms"]["pass"] is False
