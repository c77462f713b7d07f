"""Each field's rules, table-driven: a request that breaks them gets a 400 with the one JSON error shape and every
bad field named in `details`, and records nothing; one at the edge of the rules is accepted and stored as sent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from actors.channels import ChannelConfig, build_channels
from service.validation import parse_notification
from tests.service import refusals
from tests.service.conftest import ABSENT, assert_error, job_count, notification, post
from tests.service.refusals import Bad, assert_refused, with_raw_value

# The module's ledger and apps (tests/service/refusals.py), offered to its tests by their names.
ledger, shared_client_for, client = refusals.ledger, refusals.shared_client_for, refusals.client

#: Settings that enable the sms channel (the gateway is never called at intake).
SMS = {
    "WJP_SMS_URL": "http://127.0.0.1:9",
    "WJP_SMS_ACCOUNT": "AC1",
    "WJP_SMS_TOKEN": "t",
    "WJP_SMS_FROM": "+15550000000",
}


def ahead(**delta: float) -> str:
    """An RFC 3339 time this far from now. The table is built at import, which in a whole run may be many minutes
    before a case is used: each case keeps a margin of an hour or more from its limit."""
    return (datetime.now(UTC) + timedelta(**delta)).isoformat().replace("+00:00", "Z")


BAD_FIELDS: dict[str, Bad] = {
    # Missing or non-string fields
    "missing recipient": Bad(notification(recipient=ABSENT), fields=("recipient",)),
    "missing channel": Bad(notification(channel=ABSENT), fields=("channel",)),
    "missing message": Bad(notification(message=ABSENT), fields=("message",)),
    "recipient a number": Bad(notification(recipient=42), fields=("recipient",)),
    "recipient null": Bad(notification(recipient=None), fields=("recipient",)),
    "recipient an object": Bad(notification(recipient={"email": "user@example.com"}), fields=("recipient",)),
    "recipient a list": Bad(notification(recipient=["user@example.com"]), fields=("recipient",)),
    "channel a number": Bad(notification(channel=1), fields=("channel",)),
    "channel null": Bad(notification(channel=None), fields=("channel",)),
    "message a number": Bad(notification(message=3.5), fields=("message",)),
    "message null": Bad(notification(message=None), fields=("message",)),
    "message an object": Bad(notification(message={"text": "hi"}), fields=("message",)),
    "message a boolean": Bad(notification(message=True), fields=("message",)),
    "subject a number": Bad(notification(subject=7), fields=("subject",)),
    "idempotency_key a number": Bad(notification(idempotency_key=123), fields=("idempotency_key",)),
    "send_at a number": Bad(notification(send_at=1893484800), fields=("send_at",)),
    # Channels and recipients
    "unknown channel": Bad(notification(channel="pigeon"), fields=("channel",)),
    "sms when no gateway is configured": Bad(notification(channel="sms", recipient="+12345678"), fields=("channel",)),
    "email not an address": Bad(notification(recipient="not-an-address"), fields=("recipient",)),
    "email two at signs": Bad(notification(recipient="a@b@example.com"), fields=("recipient",)),
    "email nothing before the at": Bad(notification(recipient="@example.com"), fields=("recipient",)),
    "email with a space": Bad(notification(recipient="user name@example.com"), fields=("recipient",)),
    "email with a line break": Bad(notification(recipient="user@example.com\r\nBcc: x@y.z"), fields=("recipient",)),
    "email empty": Bad(notification(recipient=""), fields=("recipient",)),
    "sms too short": Bad(notification(channel="sms", recipient="+123"), fields=("recipient",), env=SMS),
    "sms without plus": Bad(notification(channel="sms", recipient="12345678"), fields=("recipient",), env=SMS),
    "sms too long": Bad(notification(channel="sms", recipient="+1234567890123456"), fields=("recipient",), env=SMS),
    "sms with letters": Bad(notification(channel="sms", recipient="+1234567890a"), fields=("recipient",), env=SMS),
    "webhook ftp": Bad(notification(channel="webhook", recipient="ftp://x"), fields=("recipient",)),
    "webhook not a url": Bad(notification(channel="webhook", recipient="not a url"), fields=("recipient",)),
    "webhook relative": Bad(notification(channel="webhook", recipient="/hook"), fields=("recipient",)),
    "webhook no host": Bad(notification(channel="webhook", recipient="http://"), fields=("recipient",)),
    "webhook host not IDNA": Bad(
        notification(channel="webhook", recipient="http://xn--zz.com/"), fields=("recipient",)
    ),
    "webhook user and password": Bad(
        notification(channel="webhook", recipient="https://hook:s3cret@example.com/in"), fields=("recipient",)
    ),
    "webhook user alone": Bad(
        notification(channel="webhook", recipient="https://hook@example.com/in"), fields=("recipient",)
    ),
    "log empty": Bad(notification(channel="log", recipient=""), fields=("recipient",)),
    "log blank": Bad(notification(channel="log", recipient="   "), fields=("recipient",)),
    # Message, subject, metadata, send_at
    "message empty": Bad(notification(message=""), fields=("message",)),
    "message blank": Bad(notification(message=" \n\t "), fields=("message",)),
    "message of 16385 characters": Bad(notification(message="m" * 16_385), fields=("message",)),
    "subject of 256 characters": Bad(notification(subject="s" * 256), fields=("subject",)),
    "subject with CR LF": Bad(notification(subject="Hi\r\nBcc: victim@example.com"), fields=("subject",)),
    "subject with LF": Bad(notification(subject="Hi\nthere"), fields=("subject",)),
    "metadata a list": Bad(notification(metadata=[1, 2]), fields=("metadata",)),
    "metadata a string": Bad(notification(metadata="{}"), fields=("metadata",)),
    "metadata a number": Bad(notification(metadata=1), fields=("metadata",)),
    "metadata over 4 KiB": Bad(notification(metadata={"blob": "x" * 4096}), fields=("metadata",)),
    "send_at not a time": Bad(notification(send_at="tomorrow"), fields=("send_at",)),
    "send_at without time zone": Bad(notification(send_at="2020-01-01T08:00:00"), fields=("send_at",)),
    "send_at a date only": Bad(notification(send_at="2020-01-01"), fields=("send_at",)),
    "send_at an impossible date": Bad(notification(send_at="2020-02-30T08:00:00Z"), fields=("send_at",)),
    # In range as written, but not once converted to UTC
    "send_at before year 1 in UTC": Bad(notification(send_at="0001-01-01T00:00:00+01:00"), fields=("send_at",)),
    "send_at after year 9999 in UTC": Bad(notification(send_at="9999-12-31T23:59:59-01:00"), fields=("send_at",)),
    # More than WJP_MAX_SCHEDULE (default one year) ahead
    "send_at in the year 9999": Bad(notification(send_at="9999-01-01T00:00:00Z"), fields=("send_at",)),
    "send_at a year and a day ahead": Bad(notification(send_at=ahead(days=366)), fields=("send_at",)),
    "send_at over WJP_MAX_SCHEDULE": Bad(
        notification(send_at=ahead(seconds=7200)), fields=("send_at",), env={"WJP_MAX_SCHEDULE": "3600"}
    ),
    "unknown field": Bad(notification(priority="high"), fields=("priority",)),
    # Text the ledger cannot store: 400, never 5xx
    "NUL in message": Bad(notification(message="a\x00b"), fields=("message",)),
    "NUL in recipient": Bad(notification(channel="log", recipient="ops\x00"), fields=("recipient",)),
    "NUL in subject": Bad(notification(subject="a\x00b"), fields=("subject",)),
    "NUL in metadata": Bad(notification(metadata={"k": "a\x00b"}), fields=("metadata",)),
    "NUL in a metadata key": Bad(notification(metadata={"a\x00": 1}), fields=("metadata",)),
    "NUL in idempotency_key": Bad(notification(idempotency_key="k\x00"), fields=("idempotency_key",)),
    "lone surrogate in message": Bad(with_raw_value("message", '"abc \\ud800 def"'), fields=("message",)),
    "lone surrogate in recipient": Bad(with_raw_value("recipient", '"\\udfff@example.com"'), fields=("recipient",)),
    "lone surrogate in subject": Bad(with_raw_value("subject", '"\\ud800"'), fields=("subject",)),
    "lone surrogate in metadata": Bad(with_raw_value("metadata", '{"k": ["\\ud800"]}'), fields=("metadata",)),
    "lone surrogate in idempotency_key": Bad(
        with_raw_value("idempotency_key", '"\\ud800"'), fields=("idempotency_key",)
    ),
}


@pytest.fixture(scope="module")
def app_settings() -> set[frozenset[tuple[str, str]]]:
    """The settings of every app this module's tables build."""
    envs = [case.env for case in BAD_FIELDS.values()] + [env for _, env in GOOD_EDGES.values()]
    return {frozenset(env.items()) for env in envs}


@pytest.mark.parametrize("case", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_a_bad_request_gets_its_status_and_one_json_error_naming_what_is_wrong(shared_client_for, ledger, case: Bad):
    assert_refused(shared_client_for(**case.env), ledger, case)


def test_an_unknown_channel_is_answered_with_the_list_of_enabled_channels(client):
    error = assert_error(post(client, notification(channel="pigeon")), 400, "validation_error")

    (detail,) = error["details"]
    assert detail["field"] == "channel"
    assert "pigeon" in detail["message"]
    assert "email, log, webhook" in detail["message"]
    assert "sms" not in detail["message"]  # not configured, so not enabled


def test_the_enabled_channels_include_sms_once_its_gateway_is_configured(shared_client_for):
    error = assert_error(post(shared_client_for(**SMS), notification(channel="pigeon")), 400, "validation_error")

    assert "email, log, sms, webhook" in error["details"][0]["message"]


GOOD_EDGES: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "message of 16384 characters": (notification(message="m" * 16_384), {}),
    "message of 16384 non-ASCII characters": (notification(message="é" * 16_384), {}),
    "subject of 255 characters": (notification(subject="s" * 255), {}),
    "subject of 255 non-ASCII characters": (notification(subject="ü" * 255), {}),
    "empty subject": (notification(subject=""), {}),
    "metadata of exactly 4 KiB": (notification(metadata={"blob": "x" * (4096 - len('{"blob":""}'))}), {}),
    "empty metadata": (notification(metadata={}), {}),
    "nested metadata": (notification(metadata={"a": {"b": [1, 2.5, True, None, "x"]}}), {}),
    "sms of 8 digits": (notification(channel="sms", recipient="+12345678"), SMS),
    "sms of 15 digits": (notification(channel="sms", recipient="+123456789012345"), SMS),
    "webhook https": (notification(channel="webhook", recipient="https://example.com/hook?a=1"), {}),
    "webhook http with port": (notification(channel="webhook", recipient="http://example.com:8080/hook"), {}),
    "log any text": (notification(channel="log", recipient="ops team"), {}),
    "send_at with offset": (notification(send_at="2020-01-01T10:00:00+02:00"), {}),
    "send_at with fraction": (notification(send_at="2020-01-01T08:00:00.123456Z"), {}),
    # RFC 3339 section 5.6: "T" and "Z" may alternatively be lower case
    "send_at with lower case t and z": (notification(send_at="2020-01-01t08:00:00z"), {}),
    "send_at 364 days ahead": (notification(send_at=ahead(days=364)), {}),
    "send_at within WJP_MAX_SCHEDULE": (notification(send_at=ahead(seconds=30)), {"WJP_MAX_SCHEDULE": "60"}),
    "explicit nulls for optional fields": (notification(subject=None, metadata=None, send_at=None), {}),
    "non-ASCII message": (notification(message="Halo 👋 — dari sistem worker! 日本語"), {}),
}


@pytest.mark.parametrize("body, env", GOOD_EDGES.values(), ids=GOOD_EDGES.keys())
def test_a_request_at_the_edge_of_the_rules_is_accepted_and_stored_faithfully(shared_client_for, body, env):
    client = shared_client_for(**env)

    result = post(client, body)

    assert result.status_code == 202, result.text
    job = client.simulate_get(f"/api/notifications/{result.json['job_id']}").json
    assert job["recipient"] == body["recipient"]
    assert job["channel"] == body["channel"]
    for name in ("subject", "metadata"):
        if name in body:
            assert job[name] == body[name]


def test_several_bad_fields_are_all_named_in_one_answer(client, ledger):
    body = {"recipient": 5, "channel": "email", "message": "", "subject": "x" * 300, "metadata": [], "send_at": "soon"}

    jobs_before = job_count(ledger)

    error = assert_error(post(client, body, **{"Idempotency-Key": "many"}), 400, "validation_error")

    assert {d["field"] for d in error["details"]} == {"recipient", "message", "subject", "metadata", "send_at"}
    for name in ("recipient", "message", "subject", "metadata", "send_at"):
        assert name in error["message"]
    assert job_count(ledger) == jobs_before


def test_every_field_of_a_checked_notification_lands_where_the_ledger_reads_it():
    """The request is built positionally (a batch builds one per item): each value must reach its own field."""
    channels = build_channels(ChannelConfig(webhook_allow_private=True))
    body = {
        "idempotency_key": "key-1", "recipient": "https://hooks.example.com/in", "channel": "webhook",
        "message": "hello", "subject": "a subject", "metadata": {"tag": "x"}, "send_at": "2026-12-31T03:04:05Z",
        "callback_url": "https://callbacks.example.com/done",
    }  # fmt: skip

    now = datetime(2026, 12, 4, tzinfo=UTC)
    request = parse_notification(body, header_key=None, channels=channels, max_attempts=7, scope="producer-1", now=now)

    assert msgspec.structs.asdict(request) == {
        "idempotency_key": "key-1", "recipient": "https://hooks.example.com/in", "channel": "webhook",
        "message": "hello", "max_attempts": 7, "subject": "a subject", "metadata": {"tag": "x"},
        "send_at": datetime(2026, 12, 31, 3, 4, 5, tzinfo=UTC), "scope": "producer-1",
        "destination": channels["webhook"].destination("https://hooks.example.com/in"),
        "callback_url": "https://callbacks.example.com/done",
        "callback_destination": channels["webhook"].destination("https://callbacks.example.com/done"),
    }  # fmt: skip
