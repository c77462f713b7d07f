"""Settings: defaults as SPEC lists them, and a bad value stops start-up with a message naming it."""

from __future__ import annotations

import pytest

from actors.broker import TIME_LIMIT_CHECK_MS
from actors.settings import Settings, SettingsError


def test_the_defaults_are_those_of_the_contract():
    settings = Settings.from_env({})
    assert settings.database_url == "sqlite:///var/wjp.sqlite3"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.queue == "notifications"
    assert settings.max_attempts == 5
    assert (settings.backoff.initial, settings.backoff.maximum, settings.backoff.jitter) == (2, 3600, 1)
    assert settings.visibility_timeout == 60
    assert (settings.reconcile_interval, settings.reconcile_grace) == (15, 10)
    assert settings.channels.webhook_timeout == 10
    assert settings.channels.webhook_allow_private is False
    assert settings.channels.email_from == "notifications@localhost"


def test_postgres_urls_are_driven_by_psycopg_3():
    assert Settings.from_env({"DATABASE_URL": "postgres://u@h/db"}).database_url == "postgresql+psycopg://u@h/db"
    assert Settings.from_env({"DATABASE_URL": "postgresql://u@h/db"}).database_url == "postgresql+psycopg://u@h/db"


def test_durations_may_be_fractional():
    settings = Settings.from_env({"WJP_BACKOFF_INITIAL": "0.4", "WJP_VISIBILITY_TIMEOUT": "2.5"})
    assert settings.backoff.initial == 0.4 and settings.visibility_timeout == 2.5


def test_every_channel_timeout_and_the_attempt_time_limit_stay_inside_the_visibility_timeout():
    settings = Settings.from_env({"WJP_VISIBILITY_TIMEOUT": "8", "WJP_WEBHOOK_TIMEOUT": "30"})
    assert settings.attempt_time_limit < settings.visibility_timeout
    assert settings.channels.timeout_cap < settings.attempt_time_limit


def test_a_visibility_timeout_of_2_s_keeps_every_margin_and_one_under_it_is_refused_in_one_line():
    settings = Settings.from_env({"WJP_VISIBILITY_TIMEOUT": "2"})
    # Dramatiq's time limit strikes up to its check interval late: still inside the timeout, with time to write.
    assert settings.channels.timeout_cap < settings.attempt_time_limit
    assert settings.attempt_time_limit + TIME_LIMIT_CHECK_MS / 1000 < settings.visibility_timeout
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"WJP_VISIBILITY_TIMEOUT": "1.9"})
    assert str(refused.value) == "WJP_VISIBILITY_TIMEOUT must be a number of seconds of at least 2, got '1.9'"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WJP_MAX_ATTEMPTS", "many"),
        ("WJP_MAX_ATTEMPTS", "0"),
        ("WJP_BACKOFF_INITIAL", "-1"),
        ("WJP_BACKOFF_MAX", "soon"),
        ("WJP_BACKOFF_JITTER", "nan"),
        ("WJP_VISIBILITY_TIMEOUT", "0"),
        ("WJP_RECONCILE_INTERVAL", "inf"),
        ("WJP_RECONCILE_GRACE", "x"),
        ("WJP_WEBHOOK_TIMEOUT", "0"),
        ("WJP_WEBHOOK_ALLOW_PRIVATE", "maybe"),
        ("WJP_WEBHOOK_SECRET", "plain-secret"),
        ("WJP_SMTP_URL", "http://mail"),
        ("WJP_SMS_URL", "ftp://sms"),
        ("REDIS_URL", "http://localhost"),
        ("DATABASE_URL", "mysql://db"),
        ("WJP_QUEUE", "bad queue!"),
        ("WJP_FLOW_CONTROL", "sometimes"),
        ("WJP_DESTINATION_CONCURRENCY", "0"),
        ("WJP_DESTINATION_SHARE", "0"),
        ("WJP_DESTINATION_SHARE", "1.5"),
        ("WJP_DESTINATION_RATE", "-1"),
        ("WJP_DESTINATION_RATE", "inf"),
        ("WJP_MAX_THROTTLES", "-1"),
        ("WJP_BREAKER_THRESHOLD", "0"),
        ("WJP_BREAKER_COOLDOWN", "0"),
        ("WJP_MAX_DEFERRAL", "never"),
    ],
)
def test_a_bad_value_is_refused_with_a_message_naming_the_variable(name, value):
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({name: value})
    message = str(refused.value)
    assert name in message and "\n" not in message


def test_flow_control_has_the_contracts_defaults_and_takes_fractional_values():
    defaults = Settings.from_env({}).flow
    assert (defaults.enabled, defaults.concurrency, defaults.share, defaults.rate) == (True, 20, 0.5, None)
    assert (defaults.max_throttles, defaults.breaker_threshold, defaults.breaker_cooldown) == (20, 10, 30.0)
    assert defaults.max_deferral == 86400.0
    flow = Settings.from_env(
        {"WJP_DESTINATION_RATE": "2.5", "WJP_DESTINATION_SHARE": "0.25", "WJP_BREAKER_COOLDOWN": "0.5"}
    ).flow
    assert (flow.rate, flow.share, flow.breaker_cooldown) == (2.5, 0.25, 0.5)
    assert Settings.from_env({"WJP_FLOW_CONTROL": "false", "WJP_MAX_THROTTLES": "0"}).flow.enabled is False
