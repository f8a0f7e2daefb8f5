"""Cookbook-style parallel processor: one request started per loop turn, capacity tracking.

Written for this benchmark after the approach of the OpenAI cookbook's
``api_request_parallel_processor``: requests are read lazily, one per turn of a loop that
sleeps 1 ms; a request starts only when the request and token buckets (refilled per
minute) and the in-flight capacity (the tier, C) allow; failures go to a retry queue; a
rate limit is recognised by the words "rate limit" in the error message and pauses new
requests for 15 s. Zhipu's 1302 message does not contain those words.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from _common import Report, parse_args, read_spec

SLEEP_EACH_LOOP = 0.001
PAUSE_AFTER_RATE_LIMIT = 15.0
MAX_ATTEMPTS = 5
# Generous minute budgets: the platform's tiers cap concurrency, not requests per minute.
MAX_REQUESTS_PER_MINUTE = 1_000_000
MAX_TOKENS_PER_MINUTE = 100_000_000


@dataclass
class Status:
    started: int = 0
    in_progress: int = 0
    succeeded: int = 0
    failed: int = 0
    rate_limit_errors: int = 0
    other_errors: int = 0
    last_rate_limit: float = 0.0


@dataclass
class Job:
    task_id: int
    body: dict[str, Any]
    tokens: int
    attempts_left: int
    result: list[Any] = field(default_factory=list)

    async def call(
        self,
        session: aiohttp.ClientSession,
        url: str,
        headers: dict[str, str],
        retry: asyncio.Queue[Job],
        status: Status,
        report: Report,
    ) -> None:
        t0 = report.sent()
        error: str | None = None
        try:
            async with session.post(url, headers=headers, data=orjson.dumps(self.body)) as r:
                doc = orjson.loads(await r.read())
            if "error" in doc:
                error = str(doc["error"].get("message", ""))
                if "rate limit" in error.lower():
                    status.last_rate_limit = time.time()
                    status.rate_limit_errors += 1
                else:
                    status.other_errors += 1
                if r.status == 429:
                    report.rate_limited += 1
        except Exception as exc:
            status.other_errors += 1
            error = type(exc).__name__
        if error is not None:
            self.result.append(error)
            if self.attempts_left:
                retry.put_nowait(self)
            else:
                status.in_progress -= 1
                status.failed += 1
                report.done(t0, False, error)
        else:
            status.in_progress -= 1
            status.succeeded += 1
            report.done(t0, True)


def estimate_tokens(body: dict[str, Any]) -> int:
    """Prompt characters / 4 plus the completion budget, as the cookbook counts."""
    chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
    return chars // 4 + int(body.get("max_tokens", 16))


async def main() -> None:
    args = parse_args(__doc__)
    report = Report("cookbook")
    url = args.base_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {args.api_key}", "Content-Type": "application/json"}
    status = Status()
    retry: asyncio.Queue[Job] = asyncio.Queue()
    rows = read_spec(args.spec)
    next_job: Job | None = None
    more = True
    req_cap, tok_cap = float(MAX_REQUESTS_PER_MINUTE), float(MAX_TOKENS_PER_MINUTE)
    last_update = time.time()
    task_id = 0
    background: set[asyncio.Task[None]] = set()
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        while True:
            if next_job is None:
                if not retry.empty():
                    next_job = retry.get_nowait()
                elif more:
                    try:
                        _, body = next(rows)
                        next_job = Job(task_id, body, estimate_tokens(body), MAX_ATTEMPTS)
                        task_id += 1
                        status.started += 1
                        status.in_progress += 1
                    except StopIteration:
                        more = False
            now = time.time()
            elapsed = now - last_update
            req_cap = min(req_cap + MAX_REQUESTS_PER_MINUTE * elapsed / 60, MAX_REQUESTS_PER_MINUTE)
            tok_cap = min(tok_cap + MAX_TOKENS_PER_MINUTE * elapsed / 60, MAX_TOKENS_PER_MINUTE)
            last_update = now
            # Capacity: the minute buckets and the tier's in-flight slots.
            in_flight = len(background)
            if (
                next_job is not None
                and req_cap >= 1
                and tok_cap >= next_job.tokens
                and in_flight < args.concurrency
            ):
                req_cap -= 1
                tok_cap -= next_job.tokens
                next_job.attempts_left -= 1
                task = asyncio.create_task(
                    next_job.call(session, url, headers, retry, status, report)
                )
                background.add(task)
                task.add_done_callback(background.discard)
                next_job = None
            if status.in_progress == 0 and not more and next_job is None:
                break
            await asyncio.sleep(SLEEP_EACH_LOOP)
            since = time.time() - status.last_rate_limit
            if since < PAUSE_AFTER_RATE_LIMIT:
                await asyncio.sleep(PAUSE_AFTER_RATE_LIMIT - since)
    report.emit()


if __name__ == "__main__":
    asyncio.run(main())
