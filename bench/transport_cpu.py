"""CPU per request of each HTTP transport candidate, on one harness, against the simulator.

The simulator runs as its own process (core 1, fixed latency L); each candidate runs in a
fresh child process (core 0) that sends N small chat requests with C in flight (C workers
on one event loop, uvloop where the library runs on asyncio) and reports the CPU its
process used for the requests, threads included (getrusage), imports and start-up left
out. The candidates are the runner's two transports and the libraries issue 14 names;
one that is not installed is skipped.

    python bench/transport_cpu.py [--n 5000] [--c 500] [--latency 0.2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

KEY = "bench0000000.bench-secret"
BODY = json.dumps(
    {"model": "glm-4.5-air", "messages": [{"role": "user", "content": "Say hi in five words."}]}
).encode()
HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
CANDIDATES = [
    "runner-fast",
    "runner-httpx",
    "aiohttp",
    "httpx-aiohttp",
    "curl_cffi",
    "pyreqwest",
    "niquests",
]

Send = Callable[[], Awaitable[bool]]


async def _client(name: str, url: str, c: int) -> tuple[Send, Callable[[], Awaitable[Any]]]:
    """(send one request -> ok, close) for a candidate."""
    if name in ("runner-fast", "runner-httpx"):
        from runner.http import make_transport

        base, _, path = url.partition("/chat/")
        t = make_transport(name.split("-")[1], base, KEY)

        async def send() -> bool:
            r = await t.request("POST", "/chat/" + path, BODY, 300.0)
            return r.status == 200

        return send, t.aclose
    if name == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

        async def send() -> bool:
            async with session.post(url, data=BODY, headers=HEADERS) as r:
                await r.read()
                return r.status == 200

        return send, session.close
    if name == "httpx-aiohttp":
        import httpx
        from httpx_aiohttp import HttpxAiohttpClient

        client = HttpxAiohttpClient(limits=httpx.Limits(max_connections=None), timeout=300)

        async def send() -> bool:
            r = await client.post(url, content=BODY, headers=HEADERS)
            return r.status_code == 200

        return send, client.aclose
    if name == "curl_cffi":
        from curl_cffi.requests import AsyncSession

        s = AsyncSession(max_clients=c, timeout=300)

        async def send() -> bool:
            r = await s.post(url, data=BODY, headers=HEADERS)
            return bool(r.status_code == 200)

        return send, s.close
    if name == "pyreqwest":
        from pyreqwest.client import ClientBuilder

        client = ClientBuilder().max_connections(c + 8).build()

        async def send() -> bool:
            req = client.post(url).headers(HEADERS).body_bytes(BODY).build()
            r = await req.send()
            await r.bytes()
            return bool(r.status == 200)

        return send, client.close
    if name == "niquests":
        import niquests

        s = niquests.AsyncSession(pool_connections=4, pool_maxsize=c)

        async def send() -> bool:
            r = await s.post(url, data=BODY, headers=HEADERS, timeout=300)
            return bool(r.status_code == 200)

        return send, s.close
    raise SystemExit(f"unknown candidate {name}")


async def _child(name: str, url: str, n: int, c: int) -> dict[str, Any]:
    send, close = await _client(name, url, c)
    ok = errors = 0
    left = n

    async def worker() -> None:
        nonlocal ok, errors, left
        while left > 0:
            left -= 1
            try:
                if await send():
                    ok += 1
                else:
                    errors += 1
            except Exception:
                errors += 1

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(c)))
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    await close()
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {"name": name, "ok": ok, "errors": errors, "cpu_s": cpu, "wall_s": wall}


def _pin(core: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(core)]
    return []


def _installed(name: str) -> bool:
    module = {"runner-fast": "runner", "runner-httpx": "httpx", "httpx-aiohttp": "httpx_aiohttp"}
    probe = f"import {module.get(name, name)}"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="requests per run")
    ap.add_argument("--c", type=int, default=500, help="requests in flight")
    ap.add_argument("--latency", type=float, default=0.2, help="simulator latency (s)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", help="comma-separated candidates")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        print(json.dumps(asyncio.run(_child(args.child, args.url, args.n, args.c))))
        return
    names = args.only.split(",") if args.only else CANDIDATES
    sim = subprocess.Popen(
        [*_pin(1), sys.executable, "-m", "runner.sim", "--port", "0", "--no-ledger-ids",
         "--latency", str(args.latency)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert sim.stdout is not None
    base = sim.stdout.readline().strip()
    url = base + "/chat/completions"
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        for _ in range(args.repeat):
            for name in names:
                if not _installed(name):
                    print(f"{name}: not installed, skipped", file=sys.stderr)
                    continue
                out = subprocess.run(
                    [*_pin(0), sys.executable, __file__, "--child", name, "--url", url,
                     "--n", str(args.n), "--c", str(args.c)],
                    capture_output=True, text=True, timeout=600,
                )  # fmt: skip
                if out.returncode != 0:
                    print(f"{name}: failed: {out.stderr.strip()[-300:]}", file=sys.stderr)
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                results.setdefault(name, []).append(r)
                us = r["cpu_s"] / args.n * 1e6
                print(
                    f"{name:14} {us:7.0f} µs/req  {args.n / r['wall_s']:7.0f} req/s  "
                    f"errors {r['errors']}",
                    file=sys.stderr,
                )
    finally:
        sim.send_signal(signal.SIGINT)
        sim.wait(timeout=10)
    ideal = args.c / args.latency
    print(f"\nC={args.c}, L={args.latency}s, N={args.n}, medians of {args.repeat} runs")
    print(f"| transport | CPU µs/request | requests/s (ideal {ideal:.0f}) | errors |")
    print("|---|---:|---:|---:|")
    for name in names:
        runs = results.get(name)
        if not runs:
            continue
        us = statistics.median(r["cpu_s"] / args.n * 1e6 for r in runs)
        rate = statistics.median(args.n / r["wall_s"] for r in runs)
        errors = max(r["errors"] for r in runs)
        print(f"| {name} | {us:.0f} | {rate:.0f} | {errors} |")


if __name__ == "__main__":
    main()
