"""Helpers to run `wjp` commands as real processes, the way an operator does."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
WJP = [sys.executable, "-m", "service.cli"]


class Process:
    """A `wjp` command in a session of its own, with its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> None:
        self.log = log
        self.handle = subprocess.Popen(
            [*WJP, *args], env=env, cwd=cwd, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.handle.pid

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM to the main process only, as systemd's KillMode=mixed does; the exit code."""
        if self.handle.poll() is None:
            self.handle.send_signal(signal.SIGTERM)
        return self.handle.wait(timeout=timeout)

    def kill(self) -> None:
        """kill -9 of the whole process tree: no clean-up of any kind."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.handle.pid, signal.SIGKILL)
        self.handle.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def run_wjp(args: list[str], env: dict[str, str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*WJP, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def process_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("WJP_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(values)
    return env


def http(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def wait_for_http(url: str, process: Process, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.handle.poll() is not None:
            raise AssertionError(f"process exited with {process.handle.returncode}:\n{process.output()}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer in {timeout}s:\n{process.output()}")


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    """Processes started by a test; whatever is still running at the end is killed."""
    started: list[Process] = []
    yield started
    for process in started:
        process.kill()
