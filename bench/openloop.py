"""Open-loop load: POST notifications at a fixed rate, whatever the answers' latency (no coordinated omission),
over keep-alive connections (a new one whenever all are busy).

Request i is started at t0 + i / rate. Prints one JSON line: requests sent, answers by status, the achieved
rate, how late requests started (the generator's own lag) and client-side HTTP latency percentiles.

usage: python -m bench.openloop PORT RATE SECONDS TAG [WARMUP_SECONDS [SENT_FILE [STREAMS]]]
Keys are `<TAG>w-<i>` during the warm-up and `<TAG>-<i>` after it, so the ledger can tell them apart.
SENT_FILE receives {key: Unix time the request was started} for the measured requests, so that the latency a
producer sees (request start → SUCCESS) can be computed next to the ledger's (created_at → completed_at).
STREAMS (JSON) mixes several open-loop streams, each on its own schedule: a list of {"tag", "share", "channel",
"recipient"}, a stream posting at RATE × share with keys `<TAG>.<tag>-<i>` (`<TAG>.<tag>w-<i>` in the warm-up);
`{i}` in a recipient is the request's number. Without it, one stream of `log` notifications at RATE.

The generator shares the machine's 2 cores with what it measures, so it is lean: uvloop when installed, one
protocol object per connection and plain callbacks, no coroutine or task per request (about 60 µs of CPU per
request against 165 for asyncio streams with a task each).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from bench.common import pct

MESSAGE = (
    "Hello, this is a notification body of roughly one hundred and sixty characters used for the end-to-end "
    "benchmark; it is padded to be realistic....."
)

#: What to do with an answer: called with its status (0: the connection was lost before the answer, -1: it could not
#: be opened) and the request's start time.
Answered = Callable[[int, float], None]
#: An idle keep-alive connection is not reused after this long: shorter than the API's keep-alive (5 s,
#: service/gunicorn_conf.py), as HTTP clients do (httpx: 5 s), so that no request is written to a connection the server
#: is closing at that moment (which lost a few requests of a run in 10,000).
KEEPALIVE_EXPIRY = 4.0


class Connection(asyncio.Protocol):
    """One keep-alive connection, one request at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.pending: tuple[Answered, float] | None = None
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, request: bytes, answered: Answered, started: float) -> None:
        assert self.transport is not None
        self.pending = (answered, started)
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0 or self.pending is None:
            return
        head = self.buffer[:head_end].lower()
        length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0]) if b"content-length:" in head else 0
        if len(self.buffer) < head_end + 4 + length:
            return
        self.buffer = self.buffer[head_end + 4 + length :]
        answered, started = self.pending
        self.pending = None
        if b"connection: close" in head:
            assert self.transport is not None
            self.transport.close()
        else:
            self.idle_since = time.perf_counter()
            self.pool.idle.append(self)
        answered(int(head[9:12]), started)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self in self.pool.idle:
            self.pool.idle.remove(self)
        if self.pending is not None:
            answered, started = self.pending
            self.pending = None
            answered(0, started)


class Pool:
    """Keep-alive connections to the API, as a producer's HTTP client pools them (and as wrk does in the intake
    phase): a request takes an idle one or opens a new one, so open-loop requests never wait for each other."""

    def __init__(self, loop: asyncio.AbstractEventLoop, port: int) -> None:
        self.loop = loop
        self.port = port
        self.idle: list[Connection] = []
        self.opening: set[asyncio.Task] = set()

    def post(self, body: bytes, answered: Answered) -> None:
        started = time.perf_counter()
        request = (
            b"POST /api/notifications HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        while self.idle:
            connection = self.idle.pop()
            if started - connection.idle_since < KEEPALIVE_EXPIRY and connection.transport is not None:
                connection.send(request, answered, started)
                return
            if connection.transport is not None:
                connection.transport.close()
        task = self.loop.create_task(self._open_and_send(request, answered, started))
        self.opening.add(task)
        task.add_done_callback(self.opening.discard)

    async def _open_and_send(self, request: bytes, answered: Answered, started: float) -> None:
        try:
            _, connection = await self.loop.create_connection(lambda: Connection(self), "127.0.0.1", self.port)
        except OSError:
            answered(-1, started)
            return
        connection.send(request, answered, started)


@dataclass(frozen=True)
class Stream:
    """One open-loop stream of notifications: its requests are keyed `<key_prefix>-<i>`."""

    key_prefix: str
    rate: float
    channel: str = "log"
    recipient: str = "user{i}@example.com"


async def run(port: int, streams: list[Stream], seconds: float, warmup: float, sent: dict[str, float]) -> dict:
    loop = asyncio.get_running_loop()
    total = sum(int((seconds + warmup) * s.rate) for s in streams)
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    lags: list[float] = []
    pool = Pool(loop, port)
    done = loop.create_future()
    answers = 0

    def on_answer(measured: bool) -> Answered:
        def answered(status: int, started: float) -> None:
            nonlocal answers
            statuses[status] += 1
            if measured:
                latencies.append((time.perf_counter() - started) * 1000 if status > 0 else float("nan"))
            answers += 1
            if answers == total and not done.done():
                done.set_result(None)

        return answered

    started: list[float] = []

    def start(stream: Stream, i: int, due: float) -> None:
        now = time.perf_counter()
        started.append(now)
        lags.append((now - due) * 1000)
        measured = i / stream.rate >= warmup
        key = f"{stream.key_prefix}-{i}" if measured else f"{stream.key_prefix}w-{i}"
        body = json.dumps(
            {"idempotency_key": key, "recipient": stream.recipient.format(i=i), "channel": stream.channel,
             "message": MESSAGE}
        ).encode()  # fmt: skip
        if measured:
            sent[key] = time.time()
        pool.post(body, on_answer(measured))

    # Each request is scheduled on the loop's clock, so a late one does not delay the next.
    t0 = loop.time() + 0.05
    for stream in streams:
        for i in range(int((seconds + warmup) * stream.rate)):
            due = t0 + i / stream.rate
            loop.call_at(due, start, stream, i, time.perf_counter() + (due - loop.time()))
    await done
    started.sort()
    sent_s = started[-1] - started[0]
    return {
        "target_rate": sum(s.rate for s in streams),
        "sent": total,
        "achieved_rate": round((total - 1) / sent_s, 1),
        "statuses": {str(k): v for k, v in statuses.items()},
        "start_lag_ms_p50": round(pct(lags, 50), 3),
        "start_lag_ms_p99": round(pct(lags, 99), 3),
        "http_p50_ms": round(pct(latencies, 50), 3),
        "http_p99_ms": round(pct(latencies, 99), 3),
        "http_max_ms": round(max(latencies), 3) if latencies else None,
    }


def main() -> None:
    port, rate, seconds, tag = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    warmup = float(sys.argv[5]) if len(sys.argv) > 5 else 2.0
    if len(sys.argv) > 7:
        streams = [Stream(f"{tag}.{s['tag']}", rate * s["share"], s["channel"], s["recipient"])
                   for s in json.loads(sys.argv[7])]  # fmt: skip
    else:
        streams = [Stream(tag, rate)]
    sent: dict[str, float] = {}
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    result = runner(run(port, streams, seconds, warmup, sent))
    if len(sys.argv) > 6:
        with open(sys.argv[6], "w") as f:
            json.dump(sent, f)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
