"""A local webhook receiver for the bench, in one of three behaviours, counting the requests it gets:

- `ok` (default): answers every request `204 No Content` at once;
- `throttle`: answers every request `429` with `Retry-After: 1`;
- `blackhole`: accepts the connection and reads the requests, never answers (a receiver that hangs).

asyncio protocol (no HTTP framework) on uvloop's event loop (libuv: a request costs the receiver about half the CPU
it did on asyncio's own loop, bench/README.md 2026-12-04 07:10), several processes on one port through
SO_REUSEPORT, so that it is never the bottleneck of the webhook drain (its CPU is reported next to the workers' in
the results).
A held connection costs the black hole nothing but its socket: no timer, no task, no CPU until data comes.

usage: python -m bench.sink PORT [PROCESSES [ok|throttle|blackhole]]
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys

import uvloop

_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)\s*$")
_ANSWERS = {
    "ok": b"HTTP/1.1 204 No Content\r\n",
    "throttle": b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\n",
    "blackhole": b"",
}
received = 0
served = 0


class Sink(asyncio.Protocol):
    def __init__(self, answer: bytes) -> None:
        self.answer = answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        global received, served
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            match = _LENGTH.search(head)
            total = end + 4 + (int(match.group(1)) if match else 0)
            if len(self.buffer) < total:
                return
            self.buffer = self.buffer[total:]
            received += 1
            if not self.answer:
                continue
            served += 1
            if b"connection: close" in head.lower():
                self.transport.write(self.answer + b"Connection: close\r\n\r\n")
                self.transport.close()
                return
            self.transport.write(self.answer + b"\r\n")


def serve(port: int, mode: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    sock.setblocking(False)
    answer = _ANSWERS[mode]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        server = await loop.create_server(lambda: Sink(answer), sock=sock, backlog=1024)
        await stop.wait()
        server.close()

    uvloop.run(main())
    print(f"sink pid={os.getpid()} mode={mode} received={received} served={served}", flush=True)


def main() -> None:
    port = int(sys.argv[1])
    processes = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    mode = sys.argv[3] if len(sys.argv) > 3 else "ok"
    if mode not in _ANSWERS:
        sys.exit(f"bench.sink: unknown mode {mode!r} (ok, throttle, blackhole)")
    children = []
    for _ in range(processes - 1):
        pid = os.fork()
        if pid == 0:
            serve(port, mode)
            os._exit(0)
        children.append(pid)
    serve(port, mode)
    for pid in children:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
