"""LiteLLM acompletion with asyncio.Semaphore(C), model "openai/glm-4.5-air" at api_base.

LiteLLM's OpenAI-compatible route; its own retries are left at their default.
"""

from __future__ import annotations

import asyncio
import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import
os.environ.setdefault("LITELLM_LOG", "ERROR")

import litellm
from _common import Report, parse_args, read_spec


async def main() -> None:
    args = parse_args(__doc__)
    report = Report("litellm")
    litellm.suppress_debug_info = True
    sem = asyncio.Semaphore(args.concurrency)

    async def one(body: dict[str, object]) -> None:
        kwargs = dict(body)
        kwargs["model"] = "openai/" + str(kwargs.get("model", "glm-4.5-air"))
        async with sem:
            t0 = report.sent()
            try:
                resp = await litellm.acompletion(
                    api_base=args.base_url, api_key=args.api_key, **kwargs
                )
                resp.choices[0].message.content  # noqa: B018
                report.done(t0, True)
            except litellm.RateLimitError:
                report.rate_limited += 1
                report.done(t0, False, "RateLimitError")
            except Exception as exc:
                report.done(t0, False, type(exc).__name__)

    await asyncio.gather(*(one(body) for _, body in read_spec(args.spec)))
    report.emit()


if __name__ == "__main__":
    asyncio.run(main())
