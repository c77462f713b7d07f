"""What `wjp worker` runs: Dramatiq's command line, whose main process then logs in `WJP_LOG_FORMAT` too.

With JSON logs the root logger is set up here, before Dramatiq's own set-up (which then leaves it be), and its
worker processes inherit it; with the human format Dramatiq sets up its own, as it always has."""

from __future__ import annotations

import sys

from dramatiq.cli import main

from actors import log_format

if __name__ == "__main__":
    if log_format.json_logs():
        log_format.configure()
    sys.exit(main())
