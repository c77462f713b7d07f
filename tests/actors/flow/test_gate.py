"""The flow gate pinned by tables of (state reached through its operations, event at `now`) -> (decision, state),
run on the real Redis and on fakeredis's Lua (the embedded Redis of `wjp dev`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import pytest

from actors.flow import Admission, Gate, Outcome
from tests.actors.flow.steps import (
    KEY,
    OPENED,
    PROBING,
    Admit,
    Release,
    Reset,
    Step,
    at,
    attempts,
    deferred,
    granted,
)


@dataclass(frozen=True)
class State:
    """The expected `inspect` of KEY; times in seconds after T0."""

    in_flight: int = 0
    circuit: str = "closed"
    consecutive_failures: int = 0
    opened_until: float | None = None
    paused_until: float | None = None


@dataclass(frozen=True)
class Row:
    given: list[Step]
    event: Step
    decision: Admission | None
    state: State = field(default_factory=State)


ROWS = {
    "a destination at its concurrency is deferred until its earliest lease expires": Row(
        [Admit("a", at=0, concurrency=2), Admit("b", at=5, concurrency=2)],
        Admit("c", at=6, concurrency=2), deferred("limit", 30), State(in_flight=2)),
    "a lease that expires (its worker was killed) frees its slot without a release": Row(
        [Admit("a", at=0, concurrency=2), Admit("b", at=20, concurrency=2)],
        Admit("c", at=31, concurrency=2), granted(), State(in_flight=2)),
    "a released lease frees its slot at once": Row(
        [Admit("a", concurrency=1), Release("a", Outcome.SUCCESS, at=1)],
        Admit("b", at=1, concurrency=1), granted(), State(in_flight=1)),
    "admitting a lease already held renews it instead of taking a second slot": Row(
        [Admit("a", at=0, concurrency=1)],
        Admit("a", at=10, concurrency=1), granted(), State(in_flight=1)),
    "no concurrency limit admits any number": Row(
        [Admit(f"l{n}", concurrency=None) for n in range(50)],
        Admit("one-more", concurrency=None), granted(), State(in_flight=51)),
    "a rate of 5/s lets a burst of 5 through then defers until the next token": Row(
        [Admit(f"r{n}", rate=5) for n in range(5)],
        Admit("r5", rate=5), deferred("rate", 0.2), State(in_flight=5)),
    "the next token of a 5/s rate comes 200 ms later": Row(
        [Admit(f"r{n}", rate=5) for n in range(5)],
        Admit("r5", at=0.2, rate=5), granted(), State(in_flight=6)),
    "a drained bucket refills to one second's worth and no more": Row(
        [*(Admit(f"r{n}", rate=5) for n in range(5)), *(Admit(f"s{n}", at=60, rate=5) for n in range(5))],
        Admit("s5", at=60, rate=5), deferred("rate", 60.2), State(in_flight=5)),
    "a rate under one per second still allows one at a time": Row(
        [Admit("a", rate=0.5)],
        Admit("b", at=1, rate=0.5), deferred("rate", 2), State(in_flight=1)),
    "one failure short of the threshold the circuit stays closed": Row(
        attempts(Outcome.TRANSIENT, 2),
        Admit("next", at=3), granted(), State(in_flight=1, consecutive_failures=2)),
    "the threshold-th consecutive transient failure opens the circuit for the cooldown": Row(
        [*attempts(Outcome.TRANSIENT, 2), Admit("third", at=2)],
        Release("third", Outcome.TRANSIENT, at=2.5), None,
        State(circuit="open", consecutive_failures=3, opened_until=12.5)),
    "permanent answers neither count nor reset the consecutive failures": Row(
        attempts(Outcome.TRANSIENT, 2) + attempts(Outcome.PERMANENT, 5, start=2, tag="p"),
        Admit("next", at=8), granted(), State(in_flight=1, consecutive_failures=2)),
    "a transient failure after permanent answers still opens at the threshold": Row(
        attempts(Outcome.TRANSIENT, 2) + attempts(Outcome.PERMANENT, 2, start=2, tag="p") + [Admit("t", at=4)],
        Release("t", Outcome.TRANSIENT, at=4.5), None,
        State(circuit="open", consecutive_failures=3, opened_until=14.5)),
    "throttled answers neither count nor reset the consecutive failures": Row(
        attempts(Outcome.TRANSIENT, 2) + attempts(Outcome.THROTTLED, 5, start=2, tag="t") + [Admit("x", at=7)],
        Release("x", Outcome.TRANSIENT, at=7.5), None,
        State(circuit="open", consecutive_failures=3, opened_until=17.5)),
    "a success resets the consecutive failures": Row(
        [*attempts(Outcome.TRANSIENT, 2), Admit("s", at=2)],
        Release("s", Outcome.SUCCESS, at=2.5), None, State()),
    "an open circuit defers every admission until its cooldown ends": Row(
        OPENED, Admit("x", at=12), deferred("circuit", 12.5),
        State(circuit="open", consecutive_failures=3, opened_until=12.5)),
    "after the cooldown the next admission is the probe and the circuit is half-open": Row(
        OPENED, Admit("probe", at=13), granted(probe=True),
        State(in_flight=1, circuit="half_open", consecutive_failures=3)),
    "while the probe is out every other admission is deferred for a second, to look again": Row(
        PROBING, Admit("x", at=14), deferred("circuit", 15),
        State(in_flight=1, circuit="half_open", consecutive_failures=3)),
    "nor past the probe's lease": Row(
        PROBING, Admit("x", at=42.5), deferred("circuit", 43),
        State(in_flight=1, circuit="half_open", consecutive_failures=3)),
    "a probe that succeeds closes the circuit and clears the failures": Row(
        PROBING, Release("probe", Outcome.SUCCESS, at=14), None, State()),
    "after a successful probe jobs flow again": Row(
        [*PROBING, Release("probe", Outcome.SUCCESS, at=14)],
        Admit("x", at=14), granted(), State(in_flight=1)),
    "a probe that fails reopens the circuit for twice the cooldown": Row(
        PROBING, Release("probe", Outcome.TRANSIENT, at=14), None,
        State(circuit="open", consecutive_failures=4, opened_until=34)),
    "the doubling of the cooldown stops at max_cooldown": Row(
        [*PROBING, Release("probe", Outcome.TRANSIENT, at=14), Admit("probe2", at=34)],
        Release("probe2", Outcome.TRANSIENT, at=35), None,
        State(circuit="open", consecutive_failures=5, opened_until=60)),
    "a probe answered with a permanent error closes the circuit: the receiver answers": Row(
        PROBING, Release("probe", Outcome.PERMANENT, at=14), None, State()),
    "a throttled probe closes the circuit and pauses the destination": Row(
        PROBING, Release("probe", Outcome.THROTTLED, at=14, retry_after=5), None, State(paused_until=19)),
    "a probe that sent nothing lets another probe go at once": Row(
        [*PROBING, Release("probe", Outcome.NONE, at=14)],
        Admit("probe2", at=14), granted(probe=True),
        State(in_flight=1, circuit="half_open", consecutive_failures=3)),
    "a caller deferred by a pause does not take the probe's turn": Row(
        [*attempts(Outcome.TRANSIENT, 2), Admit("slow", at=2), Admit("third", at=2),
         Release("third", Outcome.TRANSIENT, at=2.5), Release("slow", Outcome.THROTTLED, at=3, retry_after=30)],
        Admit("x", at=13), deferred("throttled", 33),
        State(circuit="open", consecutive_failures=3, opened_until=12.5, paused_until=33)),
    "a probe whose worker died is replaced when its lease expires": Row(
        PROBING, Admit("probe2", at=43), granted(probe=True),
        State(in_flight=1, circuit="half_open", consecutive_failures=3)),
    "a straggler's failure does not decide a half-open circuit": Row(
        [*attempts(Outcome.TRANSIENT, 2), Admit("slow", at=2), Admit("third", at=2),
         Release("third", Outcome.TRANSIENT, at=2.5), Admit("probe", at=13)],
        Release("slow", Outcome.TRANSIENT, at=14), None,
        State(in_flight=1, circuit="half_open", consecutive_failures=4)),
    "a straggler's success closes an open circuit: the latest news is that it serves": Row(
        [*attempts(Outcome.TRANSIENT, 2), Admit("slow", at=2), Admit("third", at=2),
         Release("third", Outcome.TRANSIENT, at=2.5)],
        Release("slow", Outcome.SUCCESS, at=5), None, State()),
    "reset closes an open circuit at once": Row(
        [*OPENED, Reset(at=3)], Admit("x", at=3), granted(), State(in_flight=1)),
    "reset lifts a pause but keeps the leases in flight": Row(
        [Admit("held"), Admit("a"), Release("a", Outcome.THROTTLED, retry_after=60)],
        Reset(at=1), None, State(in_flight=1)),
    "a Retry-After pauses the whole destination until it ends": Row(
        [Admit("a"), Release("a", Outcome.THROTTLED, at=1, retry_after=15)],
        Admit("b", at=2), deferred("throttled", 16), State(paused_until=16)),
    "a throttled answer without Retry-After pauses nothing": Row(
        [Admit("a"), Release("a", Outcome.THROTTLED, at=1)], Admit("b", at=2), granted(), State(in_flight=1)),
    "a pause only ever grows": Row(
        [Admit("a"), Admit("b"), Release("a", Outcome.THROTTLED, at=1, retry_after=30)],
        Release("b", Outcome.THROTTLED, at=2, retry_after=5), None, State(paused_until=31)),
    "a paused destination takes jobs again when the pause ends": Row(
        [Admit("a"), Release("a", Outcome.THROTTLED, at=1, retry_after=15)],
        Admit("b", at=16), granted(), State(in_flight=1)),
    "a pause is not a failure": Row(
        [*attempts(Outcome.TRANSIENT, 2), Admit("t", at=2)],
        Release("t", Outcome.THROTTLED, at=2.5, retry_after=15), None,
        State(consecutive_failures=2, paused_until=17.5)),
    "an attempt that sent nothing gives its slot back and changes nothing else": Row(
        [*attempts(Outcome.TRANSIENT, 2), Admit("n", at=2, concurrency=1)],
        Release("n", Outcome.NONE, at=3), None, State(consecutive_failures=2)),
    "a breaker that hears nothing for forget_after forgets its failures": Row(
        attempts(Outcome.TRANSIENT, 2), Admit("x", at=102), granted(), State(in_flight=1)),
    "an abandoned open circuit is forgotten forget_after past its cooldown": Row(
        OPENED, Admit("x", at=113), granted(), State(in_flight=1)),
}


def expected_state(state: State) -> dict[str, object]:
    def moment(seconds: float | None) -> datetime | None:
        return None if seconds is None else at(seconds)

    return {
        "in_flight": state.in_flight,
        "circuit": state.circuit,
        "consecutive_failures": state.consecutive_failures,
        "opened_until": moment(state.opened_until),
        "paused_until": moment(state.paused_until),
    }


@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
def test_each_event_from_each_state_gives_the_decision_and_state_of_the_table(gate: Gate, row: Row) -> None:
    for step in row.given:
        step.run(gate)
    decision = row.event.run(gate)
    assert decision == row.decision
    (state,) = gate.inspect([KEY], now=at(row.event.at))
    assert vars(state) == {"key": KEY, **expected_state(row.state)}
