"""A far-away object store on loopback: a TCP relay that adds a fixed one-way delay (and optionally caps the
bandwidth) in front of a real server. netem is not available on these machines; this is enough.

Every chunk read from one side is written to the other `delay` seconds after it arrived, in order, so the
link has latency without a throughput limit: the data in flight waits here, as a long network holds it. A
new connection's first bytes wait one round trip more, as a real client waits for the TCP handshake before
its first request. With `rate`, each direction of each connection is also paced to `rate` bytes per second.

Run in its own process, so that its CPU can be measured apart (it must not be the bottleneck):
`python -m obsbatch.testing.relay http://127.0.0.1:8333 --delay-ms 10` prints `relay http://127.0.0.1:PORT`
and serves until killed. `Relay(...)` starts one that way and stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Optional

CHUNK = 256 * 1024


class _Direction:
    """One direction of one relayed connection: read, hold each chunk until it is due, write it."""

    def __init__(self, reader, writer, delay: float, first_extra: float, rate: Optional[float]):
        self.reader, self.writer = reader, writer
        self.delay, self.first_extra, self.rate = delay, first_extra, rate
        self.queue: asyncio.Queue = asyncio.Queue()

    async def run(self) -> None:
        await asyncio.gather(self._read(), self._write())

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        extra = self.first_extra
        while True:
            try:
                data = await self.reader.read(CHUNK)
            except (ConnectionError, OSError):
                data = b""
            await self.queue.put((loop.time() + self.delay + extra, data))
            extra = 0.0
            if not data:
                return

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        free_at = 0.0  # with a rate: when the link is free for the next byte
        while True:
            due, data = await self.queue.get()
            if self.rate and data:
                due = max(due, free_at)
                free_at = due + len(data) / self.rate
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                if not data:
                    if self.writer.can_write_eof():
                        self.writer.write_eof()
                    return
                self.writer.write(data)
                await self.writer.drain()
            except (ConnectionError, OSError):
                return


async def _relay(client_reader, client_writer, upstream: tuple, delay: float, rate: Optional[float],
                 connections: set) -> None:
    # Held here for as long as it runs: while a stream's reading is paused (its buffer full), nothing in the
    # event loop refers to its transport, and the garbage collector would otherwise destroy this task.
    task = asyncio.current_task()
    connections.add(task)
    task.add_done_callback(connections.discard)
    try:
        server_reader, server_writer = await asyncio.open_connection(*upstream)
    except OSError:
        client_writer.close()
        return
    try:
        await asyncio.gather(
            _Direction(client_reader, server_writer, delay, 2 * delay, rate).run(),
            _Direction(server_reader, client_writer, delay, 0.0, rate).run())
    finally:
        for writer in (server_writer, client_writer):
            writer.close()


async def serve(upstream: tuple, delay: float, rate: Optional[float], port: int = 0) -> None:
    connections: set = set()
    server = await asyncio.start_server(lambda r, w: _relay(r, w, upstream, delay, rate, connections), "127.0.0.1",
                                        port)
    print(f"relay http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


class Relay:
    """A relay process in front of `upstream` (an http URL) with `rtt_ms` of round trip; `endpoint` is its URL."""

    def __init__(self, upstream: str, rtt_ms: float, rate: Optional[float] = None):
        args = [sys.executable, "-m", "obsbatch.testing.relay", upstream, "--delay-ms", str(rtt_ms / 2)]
        if rate:
            args += ["--rate", str(rate)]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True,
                                        cwd=str(Path(__file__).resolve().parents[2]))
        line = self.process.stdout.readline().split()
        if len(line) != 2 or line[0] != "relay":
            self.stop()
            raise RuntimeError(f"the relay did not start: {line}")
        self.endpoint = line[1]

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self.process.stdout.close()

    def __enter__(self) -> "Relay":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("upstream", help="http://host:port of the server to relay to")
    parser.add_argument("--delay-ms", type=float, required=True, help="one-way delay, milliseconds")
    parser.add_argument("--rate", type=float, default=None, help="bytes per second per direction (default: no cap)")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    url = urllib.parse.urlsplit(args.upstream)
    try:
        asyncio.run(serve((url.hostname, url.port or 80), args.delay_ms / 1000, args.rate, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
