"""The floor under a status callback's CPU on this machine (issue 20): one thread POSTing callback bodies to
`bench/sink.py` on a kept connection, through the webhook channel as the workers do, and through the least a client
can do (a request built once, one `send`, one `recv` of the answer's head); per POST, the client's CPU and the
receiver's.

    python -m bench.callback_floor [POSTS]
"""

from __future__ import annotations

import json
import socket
import sys
import time
import uuid
from collections.abc import Callable

from actors.channels.base import ChannelConfig
from actors.channels.webhook import WebhookChannel
from bench import common
from bench.common import start
from ledger.timestamps import utcnow

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _body() -> dict:
    job_id = str(uuid.uuid4())
    data = {"id": job_id, "status": "SUCCESS", "recipient": "bench-user", "channel": "log", "destination": "log",
            "idempotency_key": job_id, "subject": None, "metadata": None, "send_at": None, "attempts": 1,
            "max_attempts": 5, "next_attempt_at": None, "last_error": None, "created_at": utcnow().isoformat(),
            "updated_at": utcnow().isoformat(), "completed_at": utcnow().isoformat()}  # fmt: skip
    return {"type": "notification.succeeded", "timestamp": utcnow().isoformat(), "data": data}


def tree_cpu(pids: list[int]) -> float:
    return sum(common.tree_cpu_seconds(pid) for pid in pids)


def measure(name: str, posts: int, post: Callable[[], None], sink_pid: int) -> None:
    for _ in range(200):
        post()
    cpu0, sink0, t0 = time.process_time(), tree_cpu([sink_pid]), time.perf_counter()
    for _ in range(posts):
        post()
    cpu, sink, wall = time.process_time() - cpu0, tree_cpu([sink_pid]) - sink0, time.perf_counter() - t0
    common.log(f"{name:24s} client {cpu / posts * 1e6:6.1f} µs, receiver {sink / posts * 1e6:6.1f} µs per POST "
               f"({posts / wall:,.0f}/s)")  # fmt: skip


def main() -> None:
    posts = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    port = common.free_port()
    sink = start("floor-sink", [common.PYTHON, "-m", "bench.sink", str(port), "1"])
    try:
        common.wait_http(port, "/")
        url = f"http://127.0.0.1:{port}/status"
        channel = WebhookChannel(ChannelConfig(webhook_secret=SECRET, webhook_allow_private=True))
        event = _body()
        channel_post = lambda: channel.post_event(url, "m.SUCCESS", event, deadline=time.monotonic() + 30)  # noqa: E731
        body = json.dumps(event, separators=(",", ":")).encode()
        request = (f"POST /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body  # fmt: skip
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def raw_post() -> None:
            sock.sendall(request)
            head = sock.recv(4096)
            assert head.startswith(b"HTTP/1.1 204"), head

        for _ in range(2):
            measure("webhook channel", posts, channel_post, sink.pid)
            measure("minimal client", posts, raw_post, sink.pid)
    finally:
        sink.stop()


if __name__ == "__main__":
    main()
