"""Where prometheus_client's multiprocess mode keeps each process's metrics: the operator's or one per run.

`wjp serve` (gunicorn workers) and `wjp worker` (Dramatiq processes) each run several processes whose
metrics must be merged at scrape time; prometheus_client does that through files in one directory, named
before the processes start. The directory must not hold files of an earlier run of the same service, so
an automatic one is new for each run, and those of runs that have ended are removed.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import shutil
import tempfile
from collections.abc import MutableMapping
from pathlib import Path
from typing import IO

from prometheus_client import values

VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
#: Automatic directories are `<temp dir>/wjp-metrics-<pid>`, the pid of the process that runs for as long as
#: the service does (`wjp serve` and `wjp worker` exec into gunicorn and Dramatiq, which keep the pid).
PREFIX = "wjp-metrics-"
#: Prefix of the API processes' files (`counter_api-0.db`); no underscore, which prometheus_client's names reserve.
SLOT_PREFIX = "api-"

# The lock file of this process's slot, open for as long as the process lives.
_held: list[IO[str]] = []


def ensure_dir(env: MutableMapping[str, str]) -> str:
    """The directory named in `env`, created if needed; else a fresh one for this process, put into `env`."""
    given = env.get(VARIABLE, "").strip()
    if given:
        # Shared on purpose (e.g. by the API and the workers of one host): never emptied here.
        Path(given).mkdir(parents=True, exist_ok=True)
        return given
    root = Path(tempfile.gettempdir())
    remove_stale(root)
    path = root / f"{PREFIX}{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700)
    env[VARIABLE] = str(path)
    return str(path)


def remove_stale(root: Path) -> None:
    """Remove the automatic directories of processes that no longer run."""
    for entry in root.glob(f"{PREFIX}*"):
        pid = entry.name.removeprefix(PREFIX)
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def name_files_by_slot(directory: str) -> str:
    """Write this process's metrics to files named after the lowest free slot instead of the pid; return it.

    gunicorn replaces each worker after `max_requests`, and with files named by pid every replacement would
    leave one more file for each scrape to read, without end. A slot is held by an flock for the life of the
    process; the next worker takes a freed slot over, with its files, and counts on from their values: the
    files stay as many as the workers, and no counter goes back. Call it before the process's first metric.
    """
    number = next(n for n in itertools.count() if _take(Path(directory) / f"{SLOT_PREFIX}{n}.lock"))
    slot = f"{SLOT_PREFIX}{number}"
    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: slot)
    return slot


def _take(path: Path) -> bool:
    """Lock `path` for the rest of this process's life, unless another live process holds it."""
    lock = path.open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return False
    _held.append(lock)
    return True
