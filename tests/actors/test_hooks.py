"""The broker's signals reach the middleware that hook them, as Dramatiq's would, and no other."""

from __future__ import annotations

import logging

import pytest
from dramatiq.middleware import Middleware, MiddlewareError

from actors.broker import make_broker
from actors.hooks import hooks


class Recording(Middleware):
    def __init__(self, name: str, heard: list[str]) -> None:
        self.name = name
        self.heard = heard

    def before_ack(self, broker, message) -> None:
        self.heard.append(f"{self.name} before_ack {message}")

    def after_ack(self, broker, message) -> None:
        self.heard.append(f"{self.name} after_ack {message}")


class Quiet(Middleware):
    """Hooks nothing: Dramatiq's no-ops."""


class Failing(Middleware):
    def before_ack(self, broker, message) -> None:
        raise RuntimeError("a bug in a middleware")


class Refusing(Middleware):
    def before_ack(self, broker, message) -> None:
        raise MiddlewareError("refused")


@pytest.fixture
def broker():
    return make_broker("redis://127.0.0.1:6379/0")


@pytest.mark.parametrize(
    ("middleware", "hooked"),
    [(Recording("r", []), True), (Quiet(), False), (Failing(), True)],
)
def test_a_middleware_hooks_a_signal_when_its_class_defines_the_hook(middleware, hooked):
    assert hooks(middleware, "before_ack") is hooked


def test_a_hook_set_on_the_object_itself_counts():
    quiet = Quiet()
    quiet.before_ack = lambda broker, message: None  # type: ignore[method-assign]
    assert hooks(quiet, "before_ack")


def test_hooks_run_in_dramatiqs_order_before_in_order_and_after_in_reverse(broker):
    heard: list[str] = []
    broker.add_middleware(Recording("a", heard))
    broker.add_middleware(Quiet())
    broker.add_middleware(Recording("b", heard))

    broker.emit_before("ack", "m1")
    broker.emit_after("ack", "m1")

    assert heard == ["a before_ack m1", "b before_ack m1", "b after_ack m1", "a after_ack m1"]


def test_a_middleware_added_after_a_signal_was_sent_hears_the_next_one(broker):
    heard: list[str] = []
    broker.add_middleware(Recording("a", heard))
    broker.emit_before("ack", "m1")
    broker.add_middleware(Recording("b", heard), before=Recording)

    broker.emit_before("ack", "m2")

    assert heard == ["a before_ack m1", "b before_ack m2", "a before_ack m2"]


def test_a_failing_hook_is_logged_and_the_others_still_run(broker, caplog):
    heard: list[str] = []
    broker.add_middleware(Failing())
    broker.add_middleware(Recording("a", heard))

    with caplog.at_level(logging.CRITICAL):
        broker.emit_before("ack", "m1")

    assert heard == ["a before_ack m1"]
    assert "Unexpected failure in before_ack" in caplog.text


def test_a_middleware_error_before_a_signal_stops_it(broker):
    heard: list[str] = []
    broker.add_middleware(Refusing())
    broker.add_middleware(Recording("a", heard))

    with pytest.raises(MiddlewareError):
        broker.emit_before("ack", "m1")
    assert heard == []


#: Every signal Dramatiq's `Middleware` has a hook for.
SIGNALS = sorted({name.split("_", 1)[1] for name in vars(Middleware) if name.startswith(("before_", "after_"))})


def telling(tag: str, heard: list[str]) -> Middleware:
    """A middleware of a class of its own that hooks every signal, noting each call with its arguments."""

    def hook(name: str):  # type: ignore[no-untyped-def]
        return lambda self, broker, *args, **kwargs: heard.append(f"{tag} {name} {args} {kwargs}")

    names = [f"{when}_{signal}" for signal in SIGNALS for when in ("before", "after")]
    return type(f"Telling{tag}", (Middleware,), {name: hook(name) for name in names})()


def test_every_signal_reaches_the_same_hooks_in_the_same_order_as_through_dramatiqs_own_broker():
    """The contract with the pinned Dramatiq (constraints.txt): `SignalsToHooks` replaces its `emit_before` and
    `emit_after`; a Dramatiq whose own broker calls hooks otherwise (order, arguments) fails here."""
    from dramatiq.brokers.stub import StubBroker

    from actors.hooks import SignalsToHooks

    class Ours(SignalsToHooks, StubBroker):
        pass

    heard: dict[str, list[str]] = {"ours": [], "dramatiq": []}
    for name, broker_class in (("ours", Ours), ("dramatiq", StubBroker)):
        broker = broker_class(middleware=[])
        for tag in ("a", "b", "c"):
            broker.add_middleware(telling(tag, heard[name]))
        for signal in SIGNALS:
            broker.emit_before(signal, "message", key="value")
            broker.emit_after(signal, "message", key="value")
    assert heard["ours"] == heard["dramatiq"]
    assert len(heard["ours"]) == 3 * 2 * len(SIGNALS)
