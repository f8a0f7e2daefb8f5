"""Simulator throughput: is it fast enough to test a runner at a million rows?

Starts ``python -m runner.sim`` as a subprocess pinned to one core (``taskset -c 0``
when available) and drives it from this process, pinned to another core, with aiohttp:

1. small chat requests per second at zero latency (target: >= 3,000/s on one core),
   with the per-id ledger on (the default) and off (``--no-ledger-ids``);
2. 2,000 concurrent open requests at 1 s latency, all answered (wall time, errors).

The server's CPU use (from /proc) is printed next to each rate: below ~95 % the client,
not the simulator, was the bottleneck, and "capacity" extrapolates to a full core.

    python bench/sim_bench.py [--seconds 5] [--connections 64] [--open 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import aiohttp
import orjson
import yarl

T = TypeVar("T")

KEY = "bench0000000.bench-secret"
HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
BODY = orjson.dumps(
    {"model": "glm-4.5-air", "messages": [{"role": "user", "content": "Say hi in five words."}]}
)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the server process has used so far."""
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def server(*options: str) -> Iterator[Server]:
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []
    command = [*pin, sys.executable, "-m", "runner.sim", "--port", "0", *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert process.stdout is not None
    base_url = process.stdout.readline().decode().strip()
    if not base_url.startswith("http"):
        process.kill()
        raise RuntimeError(f"simulator did not start: {base_url!r}")
    try:
        yield Server(process, base_url)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


async def throughput(url: str, seconds: float, connections: int) -> tuple[int, int, float]:
    """(ok, errors, elapsed) for ``connections`` keep-alive loops running ``seconds``."""
    connector = aiohttp.TCPConnector(limit=connections)
    ok = errors = 0
    async with aiohttp.ClientSession(connector=connector) as session:

        async def loop(deadline: float) -> None:
            nonlocal ok, errors
            while time.monotonic() < deadline:
                async with session.post(url, data=BODY, headers=HEADERS) as response:
                    await response.read()
                    if response.status == 200:
                        ok += 1
                    else:
                        errors += 1

        # Warm up connections first so the measurement is steady state.
        await asyncio.gather(*(loop(time.monotonic() + 0.3) for _ in range(connections)))
        ok = errors = 0
        started = time.monotonic()
        await asyncio.gather(*(loop(started + seconds) for _ in range(connections)))
        return ok, errors, time.monotonic() - started


class _RawConnection(asyncio.Protocol):
    """A minimal keep-alive HTTP/1.1 client: one request in flight, prebuilt bytes.

    aiohttp spends far more CPU per request than the simulator does, so on a two-core
    machine it cannot saturate the server; this loop costs a few microseconds per request.
    """

    def __init__(self, request: bytes, deadline: float, done: asyncio.Future[None]) -> None:
        self.request = request
        self.deadline = deadline
        self.done = done
        self.buffer = b""
        self.ok = self.errors = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence the cast.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            if len(self.buffer) < end + 4 + length:
                return
            if head.startswith(b"http/1.1 200"):
                self.ok += 1
            else:
                self.errors += 1
            self.buffer = self.buffer[end + 4 + length :]
            assert self.transport is not None
            if time.monotonic() >= self.deadline:
                self.transport.close()
                return
            self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def raw_throughput(url: str, seconds: float, connections: int) -> tuple[int, int, float]:
    """(ok, errors, elapsed) like :func:`throughput`, with :class:`_RawConnection`."""
    parsed = yarl.URL(url)
    host, port = parsed.host, parsed.port
    assert host is not None and port is not None
    request = (
        f"POST {parsed.raw_path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY
    loop = asyncio.get_running_loop()

    async def run(duration: float) -> tuple[int, int, float]:
        started = time.monotonic()
        protocols = []
        waits = []
        for _ in range(connections):
            done: asyncio.Future[None] = loop.create_future()
            _, protocol = await loop.create_connection(
                lambda d=done: _RawConnection(request, started + duration, d),  # type: ignore[misc]
                host,
                port,
            )
            protocols.append(protocol)
            waits.append(done)
        await asyncio.gather(*waits)
        elapsed = time.monotonic() - started
        return sum(p.ok for p in protocols), sum(p.errors for p in protocols), elapsed

    await run(0.3)
    return await run(seconds)


async def open_requests(url: str, count: int) -> tuple[int, int, float]:
    """(ok, errors, wall) for ``count`` requests sent at once on their own connections."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> bool:
            try:
                async with session.post(url, data=BODY, headers=HEADERS) as response:
                    await response.read()
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        started = time.monotonic()
        results = await asyncio.gather(*(one() for _ in range(count)))
        wall = time.monotonic() - started
    ok = sum(results)
    return ok, count - ok, wall


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on uvloop when installed: the client should cost as little as it can."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--open", type=int, default=2000)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 65536)), hard))
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})

    rows: list[tuple[str, str, str]] = []
    clients = (("aiohttp", throughput), ("raw", raw_throughput))
    for label, options in (("ledger ids on", ()), ("ledger ids off", ("--no-ledger-ids",))):
        for client, measure in clients:
            with server(*options) as sim:
                url = f"{sim.base_url}/chat/completions"
                cpu_before = sim.cpu_seconds()
                ok, errors, elapsed = run(measure(url, args.seconds, args.connections))
                cpu = (sim.cpu_seconds() - cpu_before) / elapsed
            rate = ok / elapsed
            rows.append(
                (
                    f"chat, latency 0, {args.connections} conns, {client} client, {label}",
                    f"{rate:,.0f}/s",
                    f"server CPU {cpu:.0%} (~{rate / max(cpu, 0.01):,.0f}/s per core), "
                    f"errors {errors}",
                )
            )
    with server("--latency", "1", "--no-ledger-ids") as sim:
        url = f"{sim.base_url}/chat/completions"
        ok, errors, wall = run(open_requests(url, args.open))
        root = sim.base_url.removesuffix("/api/paas/v4")
        with urllib.request.urlopen(f"{root}/_sim/stats") as response:
            peak = orjson.loads(response.read())["peak_in_flight"]
    rows.append(
        (
            f"{args.open} open requests, latency 1 s",
            f"{wall:.2f} s wall",
            f"ok {ok}, errors {errors}, peak in flight {peak}",
        )
    )

    width = max(len(r[0]) for r in rows)
    print(f"{'scenario':<{width}}  {'result':>14}  notes")
    for name, result, notes in rows:
        print(f"{name:<{width}}  {result:>14}  {notes}")


if __name__ == "__main__":
    main()
