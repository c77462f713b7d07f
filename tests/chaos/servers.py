"""Servers a test owns outright, so it may kill, stop and restart them: a PostgreSQL cluster made with initdb in a
temporary directory (the chaos run's, and `tests.pg_cluster`'s), and a redis-server (see
`tests.conftest.RedisProcess`), each on a free port."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import free_port

#: The OS user PostgreSQL runs as when the run is root (initdb and the server refuse to run as root).
PG_USER = "postgres"


def postgres_bindir() -> Path | None:
    """Where initdb and pg_ctl are: $WJP_PG_BIN, then the PATH, then Debian's versioned directories (newest)."""
    candidates = [os.environ.get("WJP_PG_BIN", "")]
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True)
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


def _version(path: str) -> float:
    try:
        return float(Path(path).parent.name)
    except ValueError:
        return 0.0


def missing_servers() -> str | None:
    """Why a chaos run cannot start here, or None when it can."""
    if shutil.which("redis-server") is None:
        return "redis-server is not on PATH"
    return missing_postgres()


def missing_postgres() -> str | None:
    """Why a `PostgresCluster` cannot be made here, or None when it can."""
    if postgres_bindir() is None:
        return "PostgreSQL's initdb and pg_ctl were not found (set WJP_PG_BIN)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root, and runuser (to run PostgreSQL as the postgres user) is missing"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam(PG_USER)
        except KeyError:
            return f"running as root, and there is no {PG_USER!r} user to run PostgreSQL as"
    return None


class PostgresCluster:
    """A throw-away PostgreSQL cluster: `init`, `start`, `restart` (fast shutdown, as an operator does), `stop`."""

    def __init__(self) -> None:
        bindir = postgres_bindir()
        assert bindir is not None, missing_servers()
        self.bindir = bindir
        # Under /tmp with 755, so that the postgres user can reach it when the run is root.
        self.root = Path(tempfile.mkdtemp(prefix="wjp-chaos-pg-"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.root, user=PG_USER)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 120.0) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", PG_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}\n{log}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        settings = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": "300",
            # A restart here is a clean shutdown, never a machine crash: skipping fsync loses nothing.
            "fsync": "off",
            "full_page_writes": "off",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def restart(self, down_for: float = 0.0) -> None:
        """`pg_ctl restart -m fast`; or, given `down_for`, a fast stop and a start that many seconds later."""
        if not down_for:
            self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", "fast", "-w", "-t", "60", "restart")
            return
        self.shut_down()
        time.sleep(down_for)
        self.start()

    def shut_down(self) -> None:
        """Stop as an operator does (`pg_ctl stop -m fast`), data kept: returns once the port refuses connections."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def stop(self) -> None:
        """Stop at once and remove the cluster."""
        if self.running:
            # Removed below all the same: a stray server stops when its data directory goes.
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
