"""What `wjp worker` runs with `WJP_LOG_FORMAT=json`: Dramatiq's command line, its main process logging JSON too.

The root logger is set up here, before Dramatiq's own set-up (which then leaves it be), and its worker processes
inherit it."""

from __future__ import annotations

import sys

from dramatiq.cli import main, make_argument_parser

from actors import log_format

if __name__ == "__main__":
    log_format.configure()
    args = make_argument_parser().parse_args()
    # Dramatiq reloads on SIGHUP by exec'ing its argv: through this module again, not this file as a program.
    sys.argv = [sys.executable, "-m", __spec__.name, *sys.argv[1:]]
    sys.exit(main(args))
