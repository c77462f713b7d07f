"""The backoff schedule and the retry decision, pinned by tables: no clock, no randomness."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from actors.backoff import BackoffPolicy, Verdict, decide, retry_delay

DEFAULT = BackoffPolicy(initial=2, maximum=3600, jitter=1)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("failed_attempts", "rand", "expected"),
    [
        (1, 0.0, 2.0),
        (2, 0.0, 4.0),
        (3, 0.0, 8.0),
        (4, 0.0, 16.0),
        (1, 0.5, 2.5),
        (4, 0.999, 16.999),
        (11, 0.0, 2048.0),
        (12, 0.0, 3600.0),  # 4096 is over the cap
        (12, 0.5, 3600.5),  # jitter is added after the cap
        (10_000, 0.0, 3600.0),  # no overflow however many failures
    ],
)
def test_the_default_schedule_doubles_from_two_seconds_up_to_the_cap_plus_jitter(failed_attempts, rand, expected):
    assert retry_delay(DEFAULT, failed_attempts, rand=lambda: rand) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("policy", "failed_attempts", "expected"),
    [
        (BackoffPolicy(initial=0.4, maximum=10, jitter=0), 1, 0.4),
        (BackoffPolicy(initial=0.4, maximum=10, jitter=0), 3, 1.6),
        (BackoffPolicy(initial=5, maximum=7, jitter=0), 2, 7.0),
        (BackoffPolicy(initial=0, maximum=7, jitter=0), 5, 0.0),
    ],
)
def test_the_schedule_follows_each_setting(policy, failed_attempts, expected):
    assert retry_delay(policy, failed_attempts, rand=lambda: 0.0) == pytest.approx(expected)


@pytest.mark.parametrize(("retry_after", "expected"), [(None, 2.0), (1.0, 2.0), (30.0, 30.0), (0.0, 2.0)])
def test_a_providers_retry_after_is_a_floor_on_the_delay(retry_after, expected):
    assert retry_delay(DEFAULT, 1, rand=lambda: 0.0, retry_after=retry_after) == pytest.approx(expected)


def test_jitter_spreads_delays_uniformly_within_its_bound():
    import random

    rng = random.Random(7)
    delays = [retry_delay(DEFAULT, 1, rand=rng.random) for _ in range(2000)]
    assert 2.0 <= min(delays) < 2.05 and 2.95 < max(delays) < 3.0


@pytest.mark.parametrize(
    ("attempt", "max_attempts", "failed", "permanent", "verdict", "delay"),
    [
        (1, 5, False, False, Verdict.SUCCEED, 0.0),
        (5, 5, False, False, Verdict.SUCCEED, 0.0),
        (1, 5, True, False, Verdict.RETRY, 2.0),
        (2, 5, True, False, Verdict.RETRY, 4.0),
        (4, 5, True, False, Verdict.RETRY, 16.0),
        (5, 5, True, False, Verdict.FAIL, 0.0),
        (1, 5, True, True, Verdict.FAIL, 0.0),
        (1, 1, True, False, Verdict.FAIL, 0.0),
    ],
)
def test_the_decision_after_an_attempt(attempt, max_attempts, failed, permanent, verdict, delay):
    decision = decide(
        attempt=attempt,
        max_attempts=max_attempts,
        failed=failed,
        permanent=permanent,
        retry_after=None,
        policy=DEFAULT,
        now=NOW,
        rand=lambda: 0.0,
    )
    assert decision.verdict is verdict
    assert decision.delay == pytest.approx(delay)
    if verdict is Verdict.RETRY:
        assert decision.due_at == NOW + timedelta(seconds=delay)
    else:
        assert decision.due_at is None
