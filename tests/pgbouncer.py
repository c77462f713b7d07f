"""A PgBouncer of the test's own in transaction mode, in front of the test PostgreSQL server: few server
connections shared by many clients, as in production. Nothing is installed here: without the binary the test skips
(fails under CI=true, whose .ci/run installs it)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.chaos.servers import PG_USER
from tests.conftest import free_port, unavailable


class PgBouncer:
    """`pgbouncer` listening on a free port, pooling each client's transactions onto `server_connections`."""

    def __init__(self, server_url: str, *, server_connections: int = 2) -> None:
        server = make_url(server_url)
        self.database = server.database
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="wjp-pgbouncer-"))
        self.root.chmod(0o755)
        (self.root / "users.txt").write_text(f'"{server.username}" ""\n')
        (self.root / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={server.host} port={server.port or 5432}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.root / 'users.txt'}\n"
            f"pool_mode = transaction\ndefault_pool_size = {server_connections}\nmax_client_conn = 200\n"
            f"logfile = {self.root / 'pgbouncer.log'}\n"
        )
        if os.geteuid() == 0:  # it refuses to run as root
            shutil.chown(self.root, user=PG_USER)
            for path in self.root.iterdir():
                shutil.chown(path, user=PG_USER)
        self.username = server.username
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://{self.username}@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> None:
        command = [str(pgbouncer_binary()), str(self.root / "pgbouncer.ini")]
        if os.geteuid() == 0:
            command = ["runuser", "-u", PG_USER, "--", *command]
        # A session of its own: runuser forks pgbouncer as a child, and `stop` must reach both.
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.root / "pgbouncer.log").read_text(errors="replace") if self.process else ""
                    raise RuntimeError(f"pgbouncer did not start:\n{log[-2000:]}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None
        shutil.rmtree(self.root, ignore_errors=True)


def pgbouncer_binary() -> str | None:
    """Debian puts it in /usr/sbin, which a user's PATH may lack."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")


def running_pgbouncer(server_url: str) -> Iterator[PgBouncer]:
    """The body of a fixture: a started `PgBouncer`, stopped afterwards; skips when pgbouncer is not installed."""
    if pgbouncer_binary() is None:
        unavailable("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    bouncer = PgBouncer(server_url)
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.stop()
