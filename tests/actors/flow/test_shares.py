"""A process's share of its threads binds only a destination that holds them: one it does not know yet, one whose
attempts take SLOW_ATTEMPT or more on average, or one whose oldest attempt in flight has run that long; the slower
it is, the fewer threads it may hold, down to one, and one never seen to finish gets one attempt at a time."""

from __future__ import annotations

from actors.flow.shares import KNOWN_AFTER, SLOW_ATTEMPT, Shares


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def finish_attempts(shares: Shares, clock: Clock, key: str, count: int, *, lasting: float) -> None:
    for n in range(count):
        assert shares.take(key, f"done.{n}")
        clock.now += lasting
        shares.give(key, f"done.{n}", attempted=True)


def take_all(shares: Shares, key: str, count: int, prefix: str = "m") -> list[bool]:
    return [shares.take(key, f"{prefix}.{n}") for n in range(count)]


def test_a_destination_never_seen_to_finish_gets_one_attempt_at_a_time():
    shares = Shares(4, monotonic=Clock())

    assert take_all(shares, "webhook:hole:80", 3) == [True, False, False]


def test_an_unknown_destination_whose_first_attempt_was_fast_is_held_to_the_share_until_known():
    clock = Clock()
    shares = Shares(4, monotonic=clock)
    finish_attempts(shares, clock, "webhook:new:80", 1, lasting=0.02)

    assert take_all(shares, "webhook:new:80", 6) == [True] * 4 + [False] * 2


def test_a_destination_whose_attempts_run_into_their_timeout_holds_one_thread():
    clock = Clock()
    shares = Shares(4, monotonic=clock)
    finish_attempts(shares, clock, "webhook:hole:80", 1, lasting=10.0)

    assert take_all(shares, "webhook:hole:80", 3) == [True, False, False]


def test_the_longer_a_destinations_attempts_take_the_fewer_threads_it_may_hold():
    held = {}
    for lasting in (SLOW_ATTEMPT, 2 * SLOW_ATTEMPT, 4 * SLOW_ATTEMPT, 40 * SLOW_ATTEMPT):
        clock = Clock()
        shares = Shares(4, monotonic=clock)
        finish_attempts(shares, clock, "sms:slow", KNOWN_AFTER, lasting=lasting)
        held[lasting / SLOW_ATTEMPT] = sum(take_all(shares, "sms:slow", 8))

    assert held == {1: 4, 2: 2, 4: 1, 40: 1}


def test_a_destination_that_turns_fast_again_gets_its_threads_back():
    clock = Clock()
    shares = Shares(4, monotonic=clock)
    finish_attempts(shares, clock, "webhook:back:80", 1, lasting=10.0)
    # One at a time, as it is allowed: each fast answer weighs in its pace, until it is fast again.
    finish_attempts(shares, clock, "webhook:back:80", 10, lasting=0.02)

    assert take_all(shares, "webhook:back:80", 8) == [True] * 8


def test_a_destination_known_to_answer_fast_may_take_every_thread():
    clock = Clock()
    shares = Shares(4, monotonic=clock)
    finish_attempts(shares, clock, "log", KNOWN_AFTER, lasting=0.02)

    assert take_all(shares, "log", 8) == [True] * 8


def test_attempts_that_were_not_sent_do_not_make_a_destination_known():
    clock = Clock()
    shares = Shares(4, monotonic=clock)
    for n in range(KNOWN_AFTER):
        assert shares.take("log", f"unclaimed.{n}")
        shares.give("log", f"unclaimed.{n}", attempted=False)

    assert take_all(shares, "log", 2) == [True, False]


def test_a_destination_slow_on_average_is_held_to_the_share():
    clock = Clock()
    shares = Shares(4, monotonic=clock)
    finish_attempts(shares, clock, "sms:slow", KNOWN_AFTER, lasting=SLOW_ATTEMPT)

    assert take_all(shares, "sms:slow", 5) == [True] * 4 + [False]


def test_a_fast_destination_whose_oldest_attempt_outlives_the_slow_mark_is_held_until_below_its_share():
    clock = Clock()
    shares = Shares(4, monotonic=clock)
    finish_attempts(shares, clock, "log", KNOWN_AFTER, lasting=0.02)
    assert take_all(shares, "log", 6) == [True] * 6

    clock.now += SLOW_ATTEMPT
    assert not shares.take("log", "late.1"), "six in flight, the oldest for SLOW_ATTEMPT: over the share"
    for n in range(3):
        shares.give("log", f"m.{n}", attempted=False)
    assert shares.take("log", "late.2"), "three in flight: below the share again"
    assert not shares.take("log", "late.3")


def test_one_destination_held_to_its_share_leaves_the_others_alone():
    clock = Clock()
    shares = Shares(4, monotonic=clock)
    finish_attempts(shares, clock, "webhook:slow:80", 1, lasting=SLOW_ATTEMPT)
    finish_attempts(shares, clock, "email:relay:25", 1, lasting=0.02)
    take_all(shares, "webhook:slow:80", 4)

    assert take_all(shares, "email:relay:25", 4) == [True] * 4


def test_the_least_recently_used_idle_destination_is_forgotten_and_then_unknown_again():
    clock = Clock()
    shares = Shares(1, monotonic=clock, remembered=2)
    finish_attempts(shares, clock, "log", KNOWN_AFTER, lasting=0.02)
    assert take_all(shares, "log", 2, "before") == [True, True]
    for n in range(2):
        shares.give("log", f"before.{n}", attempted=True)

    shares.take("webhook:a:80", "a.1")
    shares.take("webhook:b:80", "b.1")

    assert take_all(shares, "log", 2, "after") == [True, False], "forgotten: one at a time until known again"
