"""Bare aiohttp loop: Semaphore(C) and TCPConnector(limit=C); no checkpoint, no retry.

The reference of PEERS.md: the least a client can do per request on asyncio. A spec over
several models gets a Semaphore(C) per model and a connector of C per model, since the
platform's tier (and the simulator's limit) is per key and model.
"""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
from _common import Report, parse_args, read_spec


async def main() -> None:
    args = parse_args(__doc__)
    report = Report("aiohttp")
    url = args.base_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {args.api_key}", "Content-Type": "application/json"}
    bodies = [body for _, body in read_spec(args.spec)]
    sems = {str(b["model"]): asyncio.Semaphore(args.concurrency) for b in bodies}
    connector = aiohttp.TCPConnector(limit=args.concurrency * len(sems))
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(body: dict[str, object]) -> None:
            async with sems[str(body["model"])]:
                t0 = report.sent()
                try:
                    async with session.post(url, data=orjson.dumps(body), headers=headers) as r:
                        data = await r.read()
                        if r.status == 200:
                            orjson.loads(data)
                            report.done(t0, True)
                        else:
                            report.rate_limited += r.status == 429
                            report.done(t0, False, f"HTTP {r.status}")
                except Exception as exc:
                    report.done(t0, False, type(exc).__name__)

        await asyncio.gather(*(one(body) for body in bodies))
    report.emit()


if __name__ == "__main__":
    asyncio.run(main())
