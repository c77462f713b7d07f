"""What a long-lived process (an API worker, a Dramatiq worker process) does once it has started."""

from __future__ import annotations

import gc


def freeze_start_up_objects() -> None:
    """Move everything alive now (modules, the app or broker, their clients: alive until the process ends) out of
    the garbage collector's sight, so that a full pass no longer walks them all while every thread waits
    (bench/README.md). Garbage is collected first, so that none of it is kept; later objects are collected as before."""
    gc.collect()
    gc.freeze()
