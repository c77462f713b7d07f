"""No secret in an error message or a log line: a bad URL is echoed without its user and password."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from ledger.database import without_credentials
from tests.e2e.conftest import process_env, run_wjp

BAD_URLS = {
    "WJP_SMTP_URL": "smtpx://mailer:hunter2@relay.example.com:587",
    "REDIS_URL": "http://cache_user:hunter2@cache.internal:6379/0",
    "DATABASE_URL": "postgresql//ledger_user:hunter2@db.internal/wjp",
    "WJP_SMS_URL": "ftp://sms_user:hunter2@gateway.example.com",
}


@pytest.mark.parametrize(("variable", "value"), BAD_URLS.items(), ids=list(BAD_URLS))
def test_a_bad_url_stops_the_process_with_one_line_that_never_shows_its_user_or_password(tmp_path, variable, value):
    env = process_env(**{"DATABASE_URL": f"sqlite:///{tmp_path / 'wjp.sqlite3'}", variable: value})

    result = run_wjp(["stats"], env)

    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert variable in line
    user = value.rpartition("@")[0].rpartition("/")[2].partition(":")[0]
    assert "hunter2" not in line and user not in line, line


def test_a_url_without_a_scheme_is_refused_without_echoing_its_user_or_password(tmp_path):
    env = process_env(DATABASE_URL=f"sqlite:///{tmp_path / 'wjp.sqlite3'}", WJP_SMTP_URL="mailer:hunter2@relay:587")

    result = run_wjp(["stats"], env)

    (line,) = result.stderr.strip().splitlines()
    assert "WJP_SMTP_URL" in line and "hunter2" not in line and "mailer" not in line, line


def test_wjp_migrate_names_the_ledger_without_its_user_or_password(postgres_server_url):
    url = make_url(postgres_server_url).set(password="hunter2").render_as_string(hide_password=False)
    user = make_url(url).username

    result = run_wjp(["migrate"], process_env(DATABASE_URL=url))

    assert result.returncode == 0, result.stderr
    assert "ledger schema is up to date" in result.stdout
    assert "hunter2" not in result.stdout and f"{user}:" not in result.stdout and f"{user}@" not in result.stdout


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("smtp://mailer:hunter2@relay:587", "smtp://***@relay:587"),
        ("redis://:hunter2@cache:6379/0", "redis://***@cache:6379/0"),
        ("smtp://mailer:hun/ter@2@relay:587", "smtp://***@relay:587"),
        ("mailer:hunter2@relay", "***@relay"),
        ("sqlite:////var/wjp.sqlite3", "sqlite:////var/wjp.sqlite3"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
    ],
)
def test_a_url_is_shown_without_anything_before_its_host(url, shown):
    assert without_credentials(url) == shown
