"""A fast local webhook receiver: answers every request `200` with an empty body, and counts them.

asyncio protocol (no HTTP framework), several processes on one port through SO_REUSEPORT, so that it
is never the bottleneck of the webhook drain (its CPU is reported next to the workers' in the results).

usage: python -m bench.sink PORT [PROCESSES]
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys

_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)\s*$")
_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Type: text/plain\r\n\r\n"
_RESPONSE_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
served = 0


class Sink(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        global served
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
            served += 1
            if b"connection: close" in head.lower():
                self.transport.write(_RESPONSE_CLOSE)
                self.transport.close()
                return
            self.transport.write(_RESPONSE)


def serve(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    sock.setblocking(False)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        server = await loop.create_server(Sink, sock=sock, backlog=1024)
        await stop.wait()
        server.close()

    asyncio.run(main())
    print(f"sink pid={os.getpid()} served={served}", flush=True)


def main() -> None:
    port = int(sys.argv[1])
    processes = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    children = []
    for _ in range(processes - 1):
        pid = os.fork()
        if pid == 0:
            serve(port)
            os._exit(0)
        children.append(pid)
    serve(port)
    for pid in children:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
