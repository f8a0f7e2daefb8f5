"""Bespoke Curator, online mode, openai backend, max_concurrent_requests = C.

Runs in its own virtualenv (bench/.venv-curator), since Curator pins openai and litellm
versions of its own. Its cache and request/response files go to CURATOR_CACHE_DIR, which
the harness points at a folder it deletes afterwards. Curator reports no per-request
timing, so this peer gives no latency percentiles. Curator's default treats an answer cut by
``max_tokens`` as a failure to retry; the spec asks for 16 tokens, so that is turned off.
"""

from __future__ import annotations

import importlib.util
import os
import time

os.environ.setdefault("TELEMETRY_ENABLED", "false")  # no network here
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# Curator counts tokens with tiktoken's cl100k_base, which tiktoken downloads on first use;
# litellm ships that file, so point tiktoken's cache at it instead of the network.
_litellm = importlib.util.find_spec("litellm")
if _litellm is not None and _litellm.origin:
    _bundled = os.path.join(os.path.dirname(_litellm.origin), "litellm_core_utils", "tokenizers")
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", _bundled)

from _common import Report, parse_args, read_spec  # noqa: E402
from bespokelabs import curator  # noqa: E402


class Chat(curator.LLM):
    """Sends each row's messages as they are and keeps the answer text."""

    def prompt(self, input: dict) -> list[dict]:
        return input["messages"]

    def parse(self, input: dict, response: str) -> dict:
        return {"custom_id": input["custom_id"], "response": response}


def main() -> None:
    args = parse_args(__doc__)
    report = Report("curator")
    rows = [{"custom_id": cid, "messages": body["messages"]} for cid, body in read_spec(args.spec)]
    llm = Chat(
        model_name="glm-4.5-air",
        backend="openai",
        generation_params={"max_tokens": 16},
        backend_params={
            "base_url": args.base_url,
            "api_key": args.api_key,
            "max_concurrent_requests": args.concurrency,
            # The platform's tiers cap concurrency, not requests or tokens per minute.
            "max_requests_per_minute": 10_000_000,
            "max_tokens_per_minute": 1_000_000_000,
            "require_all_responses": False,
            # Curator fails (and retries, 10 times) any answer cut by max_tokens; every row
            # here asks for 16 tokens, so accept "length" as the other tools do.
            "invalid_finish_reasons": ["content_filter"],
        },
    )
    report.t_first = time.time()
    result = llm(rows)
    report.t_last = time.time()
    dataset = result.dataset if hasattr(result, "dataset") else result
    report.ok = sum(1 for r in dataset if r.get("response") is not None)
    report.failed = len(rows) - report.ok
    report.emit()


if __name__ == "__main__":
    main()
