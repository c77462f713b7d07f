"""Replicated servers a test owns outright: a PostgreSQL standby made from a `PostgresCluster` with pg_basebackup,
which the test may promote, and Redis with a replica watched by Sentinels; each may be killed with kill -9."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import psycopg
import redis

from tests.chaos.servers import PostgresCluster
from tests.conftest import free_port, wait_for_redis

#: The Sentinels' name for the master they watch.
SERVICE = "wjp"


class ReplicatedCluster(PostgresCluster):
    """A `PostgresCluster` that can be a primary with a synchronous standby (`init_primary`), a standby of one
    (`init_standby`), be promoted, and be killed with kill -9 as a crash does."""

    def __init__(self) -> None:
        super().__init__()
        # Where initdb and pg_ctl really are (a PATH may hold links to them alone): pg_basebackup and psql too.
        self.bindir = (self.bindir / "pg_ctl").resolve().parent

    def init_primary(self, *, synchronous: bool = True) -> None:
        self.init()
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("wal_level = replica\nmax_wal_senders = 10\nwal_keep_size = '256MB'\n")
            if synchronous:
                # Any standby acknowledging: a commit the API answered is on both servers.
                conf.write("synchronous_standby_names = '*'\n")

    def init_standby(self, primary: PostgresCluster) -> None:
        """A copy of `primary` streaming from it (`pg_basebackup -R` writes standby.signal and primary_conninfo)."""
        self._run(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres", "-D", str(self.data),
            "-R", "-X", "stream", "--no-sync",
        )  # fmt: skip
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {self.port}\nunix_socket_directories = '{self.root}'\nsynchronous_standby_names = ''\n"
            )

    def promote(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "promote")

    def kill(self) -> None:
        """kill -9 the postmaster; its backends notice and exit, the port refuses connections."""
        pid_file = self.data / "postmaster.pid"
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        # Its backends exit as they notice the postmaster gone; the next start needs the pid file gone too.
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()

    def set_read_only(self, read_only: bool) -> None:
        """Make every session of this server read-only (or writable again), as a fencing tool does to a demoted
        primary: ALTER SYSTEM and a reload, the server staying up."""
        value = "on" if read_only else "off"
        psql = ("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres")
        alter = f"ALTER SYSTEM SET default_transaction_read_only = {value}"
        self._run(*psql, "-c", alter, "-c", "SELECT pg_reload_conf()")
        # pg_reload_conf() only signals the postmaster. A new session shows the value once the postmaster has read
        # it, by which time it has signalled every backend: an open connection then applies it before its next
        # statement, which on a loaded machine might otherwise run before the reload.
        url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        deadline = time.monotonic() + 30
        while True:
            with psycopg.connect(url, autocommit=True) as conn:
                if conn.execute("SHOW default_transaction_read_only").fetchone() == (value,):
                    return
            assert time.monotonic() < deadline, f"default_transaction_read_only still not {value} after 30 s"
            time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


class RedisNode:
    """One redis-server (`--sentinel` for a Sentinel) on a free port, in `directory`."""

    def __init__(self, directory: Path, name: str, lines: list[str], *, sentinel: bool = False) -> None:
        self.port = free_port()
        self.directory = directory
        self.config = directory / f"{name}.conf"
        self.log = directory / f"{name}.log"
        self.sentinel = sentinel
        base = [f"port {self.port}", "bind 127.0.0.1", f"dir {directory}", f"logfile {self.log}", 'save ""']
        self.config.write_text("\n".join([*base, *lines]) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = ["redis-server", str(self.config), *(["--sentinel"] if self.sentinel else [])]
        self.process = subprocess.Popen(args, cwd=self.directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_redis(self.port)

    def kill(self) -> None:
        """kill -9."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


class SentinelGroup:
    """A Redis master, its replica and three Sentinels watching them, quick to declare the master down."""

    def __init__(self, directory: Path, *, down_after_ms: int = 1000) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.master = RedisNode(directory, "redis-a", ["appendonly no"])
        self.replica = RedisNode(directory, "redis-b", ["appendonly no", f"replicaof 127.0.0.1 {self.master.port}"])
        watch = [
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2",
            f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}",
            f"sentinel failover-timeout {SERVICE} 10000",
            f"sentinel parallel-syncs {SERVICE} 1",
        ]
        self.sentinels = [RedisNode(directory, f"sentinel-{i}", watch, sentinel=True) for i in (1, 2, 3)]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> None:
        self.master.start()
        self.replica.start()
        self._wait(lambda: redis.Redis(port=self.master.port).info("replication").get("connected_slaves", 0) >= 1)
        for sentinel in self.sentinels:
            sentinel.start()
        # Every Sentinel must know the replica and the other Sentinels before a failover can be agreed.
        self._wait(lambda: all(self._sees_all(s) for s in self.sentinels))

    def _sees_all(self, sentinel: RedisNode) -> bool:
        client = redis.Redis(port=sentinel.port, decode_responses=True)
        try:
            return len(client.sentinel_slaves(SERVICE)) >= 1 and len(client.sentinel_sentinels(SERVICE)) >= 2
        finally:
            client.close()

    def master_port(self) -> int:
        client = redis.Redis(port=self.sentinels[0].port, decode_responses=True)
        try:
            return int(client.sentinel_get_master_addr_by_name(SERVICE)[1])
        finally:
            client.close()

    def wait_for_new_master(self, old_port: int, timeout: float = 60.0) -> int:
        self._wait(lambda: self.master_port() != old_port, timeout)
        return self.master_port()

    def stop(self) -> None:
        for node in (*self.sentinels, self.master, self.replica):
            node.kill()

    @staticmethod
    def _wait(condition, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if condition():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the Redis servers did not get there in time")
            time.sleep(0.1)
