# Gunicorn settings for the API, loaded by `wjp serve` (it passes --bind and --workers itself).
"""Gunicorn settings for the worker-job-processor API.

Plain gunicorn config: it imports nothing of ours, so it is safe to load in the master before any
fork. `bind` and `workers` are deliberately absent: `wjp serve --host --port --workers` sets them.
Anything here can still be overridden without editing the file through gunicorn's own
`GUNICORN_CMD_ARGS` (e.g. `GUNICORN_CMD_ARGS="--access-logfile -"` to turn the access log on).
"""

import os

# One event loop per process serves the ASGI app (service/app.py): the POSTs read while a group is in the database
# share the next INSERT and Redis round trip (service/intake.py); blocking calls run on a few threads
# (service/offload.py). The server is uvicorn's with the httptools parser on asyncio's loop (service/http_worker.py):
# a POST costs the API about a third less CPU than on gunicorn's own asgi worker with its Python parser
# (bench/README.md, "2026-12-04 13:50").
worker_class = "service.http_worker.HttptoolsWorker"

# A request is one INSERT and one Redis send; 30 s is far beyond a healthy one. On SIGTERM the
# workers get the same 30 s to finish what they hold (deployments give the process a bit more).
timeout = 30
graceful_timeout = 30

# Idle keep-alive connections are kept 5 s (gunicorn's default is 2 s): producers posting in bursts reuse them.
keepalive = 5

# Recycle each worker after about 200k requests (jittered so they do not all restart at once): bounds memory
# growth from fragmentation or a slow leak in any dependency. Not much sooner: a new worker costs ~0.4 s of CPU
# (imports, connections, prepared statements), which every 10k requests was ~5 % of the API's CPU under load.
max_requests = 200000
max_requests_jitter = 20000

# Never preload: Dramatiq's Redis broker and the SQLAlchemy engine must be created after fork,
# in each worker, not shared across processes.
preload_app = False

# Which front ends may set X-Forwarded-*: gunicorn's own FORWARDED_ALLOW_IPS variable, spelled out.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# Logs go to stderr (journald / container runtime collects them); no access log unless asked for.
accesslog = None
errorlog = "-"
loglevel = "info"
proc_name = "wjp-api"

# gunicorn 25.1+ opens a management socket under $HOME (for `gunicornc`) unless told not to. Nothing
# here uses it, $HOME is read-only in the container, and two instances on one host would share it.
control_socket_disable = True

# The worker heartbeat file is touched constantly; on a disk-backed /tmp (as in many containers)
# that can stall workers, so use the RAM-backed /dev/shm when it is there and writable.
worker_tmp_dir = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None

# WJP_LOG_FORMAT=json (checked by `wjp serve`): gunicorn's own lines and the app's, one JSON object per line on stderr.
# A logging config turns gunicorn's access log on; its lines are held back (WARNING) to keep it off, as above.
if os.environ.get("WJP_LOG_FORMAT", "").strip().lower() == "json":
    logconfig_dict = {
        "root": {"level": "INFO", "handlers": ["json"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": True},
        },
        "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "formatters": {"json": {"()": "actors.log_format.JsonFormatter"}},
    }
