"""AsyncOpenAI with its default client (httpx pool, 2 retries) and asyncio.Semaphore(C).

What most users write first: the official SDK pointed at the platform's base URL.
"""

from __future__ import annotations

import asyncio

import openai
from _common import Report, parse_args, read_spec


async def main() -> None:
    args = parse_args(__doc__)
    report = Report("openai")
    client = openai.AsyncOpenAI(api_key=args.api_key, base_url=args.base_url)
    sem = asyncio.Semaphore(args.concurrency)

    async def one(body: dict[str, object]) -> None:
        async with sem:
            t0 = report.sent()
            try:
                resp = await client.chat.completions.create(**body)  # type: ignore[call-overload]
                resp.choices[0].message.content  # noqa: B018 - read the answer as a user would
                report.done(t0, True)
            except openai.RateLimitError as exc:
                report.rate_limited += 1
                report.done(t0, False, f"RateLimitError {exc.status_code}")
            except Exception as exc:
                report.done(t0, False, type(exc).__name__)

    async with client:
        await asyncio.gather(*(one(body) for _, body in read_spec(args.spec)))
    report.emit()


if __name__ == "__main__":
    asyncio.run(main())
