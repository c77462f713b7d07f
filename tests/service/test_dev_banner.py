"""What `wjp dev` prints once it serves: where emails go, and never a password."""

from __future__ import annotations

from actors.settings import Settings
from service.dev import banner

ENV = {"DATABASE_URL": "sqlite:////srv/var/wjp.sqlite3", "REDIS_URL": "redis://127.0.0.1:6399/0"}


def printed(**env: str) -> str:
    settings = Settings.from_env({**ENV, **env})
    shown = {**ENV, "WJP_OUTBOX_DIR": str(settings.channels.outbox_dir)}
    return banner(host="127.0.0.1", port=8000, env=shown, settings=settings, embedded=True)


def test_without_an_smtp_server_the_banner_points_at_the_outbox() -> None:
    text = printed(WJP_OUTBOX_DIR="/srv/outbox")

    assert "/srv/outbox  (emails land here as .eml files)" in text
    assert "SMTP" not in text


def test_with_an_smtp_server_the_banner_names_it_without_its_credentials() -> None:
    text = printed(WJP_SMTP_URL="smtp://mailer:s3cret@relay.example.com:2525?starttls=true")

    assert "sent to the SMTP server at relay.example.com:2525" in text
    assert "outbox" not in text
    assert "s3cret" not in text
    assert "mailer" not in text


def test_the_banner_hides_the_passwords_of_the_ledger_and_redis_urls() -> None:
    settings = Settings.from_env(ENV)
    shown = {
        "DATABASE_URL": "postgresql+psycopg://wjp:pg-s3cret@db.internal:5432/wjp",
        "REDIS_URL": "redis://:redis-s3cret@cache.internal:6379/0",
        "WJP_OUTBOX_DIR": "/srv/outbox",
    }

    text = banner(host="127.0.0.1", port=8000, env=shown, settings=settings, embedded=False)

    assert "postgresql+psycopg://***@db.internal:5432/wjp" in text
    assert "redis://***@cache.internal:6379/0" in text
    assert "wjp:" not in text
    assert "s3cret" not in text
