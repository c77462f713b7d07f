"""`python -m tests.chaos --jobs 2000`: one chaos run; prints its figures as JSON, exits 1 if an invariant broke."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.chaos.report import ChaosConfig
from tests.chaos.scenario import ChaosRun
from tests.drills import run_drill


def main(argv: list[str] | None = None) -> int:
    defaults = ChaosConfig()
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000, help="notifications to submit (default 2000)")
    parser.add_argument("--producers", type=int, default=defaults.producer_threads, help="client threads")
    parser.add_argument("--spread", type=float, default=60.0, help="seconds to spread the submissions over")
    parser.add_argument("--worker-threads", type=int, default=defaults.worker_threads)
    parser.add_argument(
        "--sink-think", type=float, default=defaults.sink_think, help="seconds the sink takes to answer"
    )
    parser.add_argument("--drain-timeout", type=float, default=defaults.drain_timeout)
    parser.add_argument(
        "--postgres-down", type=float, default=0.0, help="seconds PostgreSQL stays down (default: a plain restart)"
    )
    parser.add_argument("--redis-down", type=float, default=defaults.redis_down, help="seconds redis-server stays down")
    parser.add_argument("--dir", type=Path, help="where the processes' logs go (default: a new temporary directory)")
    args = parser.parse_args(argv)
    config = ChaosConfig(
        jobs=args.jobs,
        producer_threads=args.producers,
        spread=args.spread,
        worker_threads=args.worker_threads,
        sink_think=args.sink_think,
        drain_timeout=args.drain_timeout,
        postgres_down=args.postgres_down,
        redis_down=args.redis_down,
    )
    return run_drill("chaos", args.dir, lambda directory: ChaosRun(config, directory), "every invariant held")


if __name__ == "__main__":
    sys.exit(main())
