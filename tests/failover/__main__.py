"""`python -m tests.failover --seconds 60`: one failover drill; prints its figures as JSON, exits 1 if anything
accepted was lost or another invariant broke."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.drills import run_drill
from tests.failover.drill import FailoverDrill
from tests.failover.report import DrillConfig


def main(argv: list[str] | None = None) -> int:
    defaults = DrillConfig()
    parser = argparse.ArgumentParser(prog="python -m tests.failover", description=__doc__)
    parser.add_argument("--seconds", type=float, default=defaults.seconds, help="seconds of traffic")
    parser.add_argument("--rate", type=float, default=defaults.rate, help="POSTs per second")
    parser.add_argument("--promote-after", type=float, default=defaults.promote_after,
                        help="seconds from the PostgreSQL primary's kill to its standby's promotion")  # fmt: skip
    parser.add_argument("--dir", type=Path, help="where the processes' logs go (default: a new temporary directory)")
    args = parser.parse_args(argv)
    config = DrillConfig(seconds=args.seconds, rate=args.rate, promote_after=args.promote_after)
    return run_drill(
        "failover", args.dir, lambda directory: FailoverDrill(config, directory), "nothing accepted was lost"
    )


if __name__ == "__main__":
    sys.exit(main())
