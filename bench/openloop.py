"""Open-loop load: POST notifications at a fixed rate, whatever the answers' latency (no coordinated omission),
over keep-alive connections (a new one whenever all are busy).

Request i is started at t0 + i / rate. Prints one JSON line: requests sent, answers by status, the achieved
rate, how late requests started (the generator's own lag) and client-side HTTP latency percentiles.

usage: python -m bench.openloop PORT RATE SECONDS TAG [WARMUP_SECONDS [SENT_FILE]]
Keys are `<TAG>w-<i>` during the warm-up and `<TAG>-<i>` after it, so the ledger can tell them apart.
SENT_FILE receives {key: Unix time the request was started} for the measured requests, so that the latency a
producer sees (request start → SUCCESS) can be computed next to the ledger's (created_at → completed_at).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter

from bench.common import pct

MESSAGE = (
    "Hello, this is a notification body of roughly one hundred and sixty characters used for the end-to-end "
    "benchmark; it is padded to be realistic....."
)


class Connections:
    """Keep-alive connections to the API, as a producer's HTTP client pools them (and as wrk does in the intake
    phase): a request takes an idle one or opens a new one, so open-loop requests never wait for each other."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self, body: bytes) -> tuple[int, float]:
        started = time.perf_counter()
        request = (
            b"POST /api/notifications HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        while self.idle:
            # A kept connection the server closed meanwhile (its keep-alive timeout): try the next one.
            reader, writer = self.idle.pop()
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                return await self._exchange(reader, writer, request), time.perf_counter() - started
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        return await self._exchange(reader, writer, request), time.perf_counter() - started

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        headers = head.lower()
        length = (
            int(headers.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0]) if b"content-length:" in headers else 0
        )
        await reader.readexactly(length)
        if b"connection: close" in headers:
            writer.close()
        else:
            self.idle.append((reader, writer))
        return int(head[9:12])


async def run(port: int, rate: float, seconds: float, tag: str, warmup: float, sent: dict[str, float]) -> dict:
    total = int((seconds + warmup) * rate)
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    lags: list[float] = []
    tasks: set[asyncio.Task] = set()
    connections = Connections(port)

    async def one(i: int) -> None:
        measured = i / rate >= warmup
        key = f"{tag}-{i}" if measured else f"{tag}w-{i}"
        body = json.dumps(
            {"idempotency_key": key, "recipient": f"user{i}@example.com", "channel": "log", "message": MESSAGE}
        ).encode()
        if measured:
            sent[key] = time.time()
        try:
            status, latency = await connections.post(body)
        except OSError:
            status, latency = 0, float("nan")
        statuses[status] += 1
        if measured:
            latencies.append(latency * 1000)

    t0 = time.perf_counter()
    for i in range(total):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append((time.perf_counter() - due) * 1000)
        task = asyncio.create_task(one(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    sent_s = time.perf_counter() - t0
    while tasks:
        await asyncio.gather(*list(tasks))
    return {
        "target_rate": rate,
        "sent": total,
        "achieved_rate": round(total / sent_s, 1),
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
    sent: dict[str, float] = {}
    result = asyncio.run(run(port, rate, seconds, tag, warmup, sent))
    if len(sys.argv) > 6:
        with open(sys.argv[6], "w") as f:
            json.dump(sent, f)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
