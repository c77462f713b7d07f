"""The attempt's deadline: whatever a receiver does, the channels end the attempt and close its connection by then.

The receivers are real servers on loopback that answer slowly: each operation stays well inside its own timeout,
only the total passes the deadline. They record, server side, whether the client was still connected when they
answered.
"""

from __future__ import annotations

import socket
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from actors.channels import ChannelConfig, Notification, TransientError, deadline
from actors.channels.deadline import Cutoff
from actors.channels.email import EmailChannel
from actors.channels.sms import SmsChannel
from actors.channels.webhook import WebhookChannel
from tests.actors.channels.slow_peers import SlowRelay, TricklingReceiver

#: The visibility timeout these tests run under, as the worker's tests do: the attempt's deadline is 0.9 of it,
#: and a single operation may wait 0.75 of it.
VISIBILITY = 3.0
LIMIT = 0.9 * VISIBILITY
CAP = 0.75 * VISIBILITY

#: Slack for the causality checks: a cut is seen by the peer at its next byte, on a busy machine.
SLACK = 1.5


def wait_for(condition: Callable[[], object], seconds: float = 15.0) -> None:
    """Wait for the server to record what it saw: it does so at its next reply, after the client has returned."""
    give_up = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < give_up, "the server did not record it"
        time.sleep(0.02)


def notification(recipient: str, *, deadline: float | None) -> Notification:
    return Notification(uuid.uuid4(), recipient, "Your order has shipped.", deadline=deadline)


@pytest.fixture
def relay() -> Iterator[SlowRelay]:
    server = SlowRelay()
    yield server
    server.stop()


@pytest.fixture
def receiver() -> Iterator[TricklingReceiver]:
    server = TricklingReceiver()
    yield server
    server.stop()


def email_channel(relay: SlowRelay) -> EmailChannel:
    config = ChannelConfig(smtp_url=f"smtp://127.0.0.1:{relay.port}", email_from="wjp@example.org", timeout_cap=CAP)
    return EmailChannel(config)


def test_a_relay_that_delays_every_reply_never_answers_a_transaction_to_a_client_still_there_after_the_deadline(
    relay: SlowRelay,
) -> None:
    relay.delay = 1.0  # well inside the 2.25 s an SMTP operation may wait; six replies make a transaction
    deadline = time.monotonic() + LIMIT

    with pytest.raises(TransientError, match="deadline") as raised:
        email_channel(relay).deliver(notification("ada@example.com", deadline=deadline))

    wait_for(lambda: relay.answers and relay.answers[-1].at > deadline)
    late = [answer for answer in relay.answers if answer.at > deadline]
    assert all(answer.peer_closed for answer in late), relay.answers
    assert relay.accepted == []
    assert late[0].at < deadline + relay.delay + SLACK
    assert f"127.0.0.1:{relay.port}" in str(raised.value)


def test_a_relay_that_trickles_its_greeting_is_cut_at_the_deadline(relay: SlowRelay) -> None:
    relay.trickle = 0.05  # a byte every 50 ms: no read ever waits long, the greeting takes ten seconds
    deadline = time.monotonic() + LIMIT

    with pytest.raises(TransientError, match="deadline"):
        email_channel(relay).deliver(notification("ada@example.com", deadline=deadline))

    wait_for(lambda: relay.answers)
    assert [answer.peer_closed for answer in relay.answers] == [True]
    assert deadline < relay.answers[0].at < deadline + SLACK


def test_a_kept_smtp_session_cut_by_the_deadline_is_not_reused(relay: SlowRelay) -> None:
    channel = email_channel(relay)
    channel.deliver(notification("ada@example.com", deadline=time.monotonic() + LIMIT))
    relay.delay = 1.0

    with pytest.raises(TransientError, match="deadline"):
        channel.deliver(notification("bob@example.com", deadline=time.monotonic() + LIMIT))
    relay.delay = 0.0
    channel.deliver(notification("cy@example.com", deadline=time.monotonic() + LIMIT))

    assert len(relay.connections) == 2
    assert len(relay.accepted) == 2
    assert relay.answers[-1].text == b"250 queued\r\n"


def webhook_channel() -> WebhookChannel:
    return WebhookChannel(ChannelConfig(webhook_timeout=10, timeout_cap=CAP, webhook_allow_private=True))


def test_a_webhook_receiver_trickling_its_response_sees_the_connection_closed_at_the_deadline(
    receiver: TricklingReceiver,
) -> None:
    receiver.trickle = 0.1  # ten bytes a second: no read waits long, the response takes eight seconds
    deadline = time.monotonic() + LIMIT

    with pytest.raises(TransientError, match="deadline"):
        webhook_channel().deliver(notification(f"{receiver.url}/hooks", deadline=deadline))

    wait_for(lambda: receiver.cuts)
    assert receiver.finished == []
    [cut] = receiver.cuts
    assert deadline < cut.at < deadline + SLACK


@pytest.fixture
def tls(make_certificate: Callable[[str], tuple[Path, Path]]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context for 127.0.0.1 and a client context that trusts it."""
    cert, key = make_certificate("IP:127.0.0.1")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


def test_a_webhook_receiver_trickling_its_response_over_tls_sees_the_connection_closed_at_the_deadline(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    # The cut shuts the kernel socket under the TLS layer; a read blocked inside TLS must wake all the same.
    receiver = TricklingReceiver(trickle=0.1, tls=tls[0])
    webhooks = WebhookChannel(
        ChannelConfig(webhook_timeout=10, timeout_cap=CAP, webhook_allow_private=True), ssl_context=tls[1]
    )
    deadline = time.monotonic() + LIMIT
    try:
        with pytest.raises(TransientError, match="deadline"):
            webhooks.deliver(notification(f"{receiver.url}/hooks", deadline=deadline))
        wait_for(lambda: receiver.cuts)
    finally:
        receiver.stop()

    assert receiver.finished == []
    [cut] = receiver.cuts
    assert deadline < cut.at < deadline + SLACK


def test_a_relay_over_implicit_tls_that_delays_every_reply_is_cut_at_the_deadline(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    relay = SlowRelay(delay=1.0, tls=tls[0])
    config = ChannelConfig(smtp_url=f"smtps://127.0.0.1:{relay.port}", email_from="wjp@example.org", timeout_cap=CAP)
    deadline = time.monotonic() + LIMIT
    try:
        with pytest.raises(TransientError, match="deadline"):
            EmailChannel(config, ssl_context=tls[1]).deliver(notification("ada@example.com", deadline=deadline))
        wait_for(lambda: relay.answers and relay.answers[-1].at > deadline)
    finally:
        relay.stop()

    late = [answer for answer in relay.answers if answer.at > deadline]
    assert [answer.peer_closed for answer in late] == [True]
    assert relay.accepted == []


def test_a_kept_webhook_connection_cut_by_the_deadline_is_not_reused(receiver: TricklingReceiver) -> None:
    webhooks = webhook_channel()
    webhooks.deliver(notification(f"{receiver.url}/hooks", deadline=time.monotonic() + LIMIT))
    receiver.trickle = 0.1

    with pytest.raises(TransientError, match="deadline"):
        webhooks.deliver(notification(f"{receiver.url}/hooks", deadline=time.monotonic() + LIMIT))
    receiver.trickle = 0.0
    assert webhooks.deliver(notification(f"{receiver.url}/hooks", deadline=time.monotonic() + LIMIT)) == "HTTP 200"

    wait_for(lambda: len(receiver.finished) == 2)
    first, second = receiver.connections
    assert receiver.requests == [first, first, second]
    assert receiver.finished == [first, second]


def test_an_sms_gateway_trickling_its_response_sees_the_connection_closed_at_the_deadline(
    receiver: TricklingReceiver,
) -> None:
    config = ChannelConfig(
        sms_url=receiver.url, sms_account="AC1", sms_token="t", sms_from="+15005550006", timeout_cap=CAP
    )
    sms = SmsChannel(config)
    assert sms.deliver(notification("+14155550123", deadline=time.monotonic() + LIMIT)) == "sid SM1"
    receiver.trickle = 0.1
    deadline = time.monotonic() + LIMIT

    with pytest.raises(TransientError, match="deadline"):
        sms.deliver(notification("+14155550123", deadline=deadline))

    wait_for(lambda: receiver.cuts)
    [cut] = receiver.cuts
    assert deadline < cut.at < deadline + SLACK
    receiver.trickle = 0.0
    assert sms.deliver(notification("+14155550123", deadline=time.monotonic() + LIMIT)) == "sid SM1"
    assert len(receiver.connections) == 2


def test_a_read_blocked_on_a_watched_socket_wakes_at_the_deadline_and_the_peer_sees_the_end() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs, Cutoff(time.monotonic() + 0.3) as cutoff:
        ours.settimeout(30)
        cutoff.watch(ours)

        assert ours.recv(1) == b""
        assert cutoff.fired and cutoff.expired
        assert theirs.recv(1) == b""


def test_a_socket_watched_after_the_deadline_is_shut_down_at_once() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs, Cutoff(time.monotonic() - 1) as cutoff:
        assert cutoff.left(10) < 0
        while not cutoff.fired:
            time.sleep(0.01)
        cutoff.watch(ours)

        theirs.settimeout(30)
        assert theirs.recv(1) == b""


def test_a_socket_of_an_attempt_that_ended_in_time_is_left_alone_after_its_deadline() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        with Cutoff(time.monotonic() + 0.2) as cutoff:
            cutoff.watch(ours)
        with Cutoff(time.monotonic() + 0.4):
            pass
        time.sleep(0.5)  # both deadlines have passed; the watchdog has woken for them

        ours.sendall(b"x")
        theirs.settimeout(30)
        assert theirs.recv(1) == b"x"
        assert not cutoff.fired


def test_without_a_deadline_nothing_is_cut_and_timeouts_stay_as_they_are() -> None:
    with Cutoff(None) as cutoff:
        assert cutoff.left(7.5) == 7.5
        assert not cutoff.expired


def test_an_attempt_armed_while_none_is_wakes_the_watchdog_only_if_its_deadline_comes_before_the_watchdogs_next_look(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    watchdog = deadline._Watchdog()
    first = Cutoff(time.monotonic() + 0.05)
    watchdog.arm(first)
    wait_for(lambda: first.fired)  # the watchdog ran it out, and sleeps with nothing armed
    woken: list[bool] = []
    monkeypatch.setattr(watchdog._lock, "notify", lambda *args: woken.append(True))

    watchdog.arm(Cutoff(time.monotonic() + 3600))
    assert woken == []
    watchdog.arm(Cutoff(time.monotonic() - 1))
    assert woken == [True]
