"""Where Redis is: one server (`redis://`, `rediss://`, `unix://`) or a master found through Sentinels
(`redis+sentinel://[[user]:password@]host1:26379,host2:26379/<service>[/<db>]`), as a connection pool."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel, SentinelConnectionPool

SENTINEL_SCHEME = "redis+sentinel"
#: The Sentinels' default port, for a host named without one.
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelAddress:
    """The Sentinels to ask, the name of the master they watch, and how to speak to that master."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    #: The Redis servers' password; the Sentinels are asked without one (they rarely have one of their own).
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelAddress:
    """Read a `redis+sentinel://` URL; raise ValueError saying what is wrong (never showing the password)."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    sentinels = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":") if ":" in host else (host, "", str(SENTINEL_PORT))
        if not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{SENTINEL_SCHEME}:// needs host:port pairs separated by commas, got {hosts!r}")
        sentinels.append((name, int(port)))
    path = [segment for segment in parts.path.split("/") if segment]
    if not 1 <= len(path) <= 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"{SENTINEL_SCHEME}:// needs the service, then a database number if any: /<service>[/<db>]")
    return SentinelAddress(
        sentinels=tuple(sentinels),
        service=unquote(path[0]),
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) or None,
    )


def connection_pool(url: str, *, timeout: float, health_check: int = 30) -> redis.ConnectionPool:
    """A pool of connections to the Redis at `url`, whose calls give up after `timeout` seconds.

    Behind Sentinels, each new connection asks them where the master is, and a connection still open to a master
    that was demoted or died is dropped on its first error: after a failover the callers' next calls reach the new
    master by themselves."""
    options = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "health_check_interval": health_check}
    if not url.startswith(f"{SENTINEL_SCHEME}://"):
        return redis.ConnectionPool.from_url(url, **options)
    address = parse_sentinel_url(url)
    sentinel_options = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    manager = Sentinel(list(address.sentinels), sentinel_kwargs=sentinel_options)
    return SentinelConnectionPool(
        address.service, manager, db=address.db, username=address.username, password=address.password, **options
    )
