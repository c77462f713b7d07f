"""`python -m tests.failover --seconds 60`: one failover drill; prints its figures as JSON, exits 1 if anything
accepted was lost or another invariant broke."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.chaos.servers import missing_servers
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
    reason = missing_servers()
    if reason:
        print(f"failover: cannot run: {reason}", file=sys.stderr)
        return 2
    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
    config = DrillConfig(seconds=args.seconds, rate=args.rate, promote_after=args.promote_after)
    drill = FailoverDrill(config, args.dir)
    report = drill.run()
    print(report.to_json())
    if not report.ok:
        print(f"failover: {len(report.failures)} invariants broken; logs in {drill.directory}", file=sys.stderr)
        return 1
    print(f"failover: nothing accepted was lost; logs in {drill.directory}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
