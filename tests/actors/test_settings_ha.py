"""Settings for a highly available deployment: several PostgreSQL hosts, Redis behind Sentinels, a pooler."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine

from actors.redis_address import parse_sentinel_url
from actors.settings import Settings, SettingsError


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_a_database_url_may_name_several_hosts_in_libpqs_form(scheme):
    raw = f"{scheme}://u:pw@h1:5432,h2:5433,h3/db?target_session_attrs=read-write"

    url = Settings.from_env({"DATABASE_URL": raw}).database_url

    # psycopg gets libpq's lists, and tries the hosts in their order.
    _, params = create_engine(url).dialect.create_connect_args(create_engine(url).url)
    assert (params["host"], params["port"]) == ("h1,h2,h3", "5432,5433,")
    assert (params["dbname"], params["user"], params["target_session_attrs"]) == ("db", "u", "read-write")


@pytest.mark.parametrize(
    "raw", ["postgresql://u:s3cret@h1,,h2/db", "postgresql://u:s3cret@h1:5432,h2:x/db", "postgresql://u:s3cret@h:x/d"]
)
def test_a_bad_database_url_is_refused_in_one_line_without_its_password(raw):
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"DATABASE_URL": raw})
    message = str(refused.value)
    assert message.startswith("DATABASE_URL") and "\n" not in message
    # The whole user part goes, as everywhere a URL is shown (`ledger.database.without_credentials`).
    assert "s3cret" not in message and "u:" not in message and "***@" in message


def test_a_redis_url_may_name_sentinels_the_service_and_a_database():
    raw = "redis+sentinel://:s3cret@s1:26379,s2:26380,s3/wjp/2"

    assert Settings.from_env({"REDIS_URL": raw}).redis_url == raw
    address = parse_sentinel_url(raw)
    assert address.sentinels == (("s1", 26379), ("s2", 26380), ("s3", 26379))
    assert (address.service, address.db, address.password) == ("wjp", 2, "s3cret")


@pytest.mark.parametrize(
    "raw",
    [
        "redis+sentinel://:s3cret@s1:26379",
        "redis+sentinel://:s3cret@s1:26379/wjp/zero",
        "redis+sentinel://:s3cret@s1:port/wjp",
        "redis+sentinel://:s3cret@s1,,s2/wjp",
    ],
)
def test_a_bad_sentinel_url_is_refused_in_one_line_naming_redis_url_without_its_password(raw):
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"REDIS_URL": raw})
    message = str(refused.value)
    assert message.startswith("REDIS_URL") and "\n" not in message and "s3cret" not in message
