"""Agent rows (`/v1/agents`) against the simulator over real HTTP on loopback.

The runner is given the model API's base URL (`.../api/paas/v4`) and must find the agents
beside it (`.../api/v1/agents`); the simulator serves only the real paths there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from jobs import settings_for, write_spec
from runner import run_job
from runner.job import checkpoint_path
from runner.sim import SimConfig, Simulator
from runner.store import Store

pytestmark = pytest.mark.anyio


def text(t: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": t}]}]


def translation(cid: str, words: str = "good morning", **variables: Any) -> dict[str, Any]:
    body = {
        "agent_id": "general_translation",
        "messages": text(words),
        "custom_variables": {"source_lang": "en", "target_lang": "fr", **variables},
    }
    return {"custom_id": cid, "url": "/v1/agents", "body": body}


def rows_of(out: Path) -> dict[str, dict[str, Any]]:
    store = Store(checkpoint_path(out), create=False)
    try:
        return {r["custom_id"]: r for chunk in store.iter_rows() for r in chunk}
    finally:
        store.close()


async def test_translation_rows_are_answered_beside_the_model_api(tmp_path: Path) -> None:
    rows = [translation(f"t{i}", f"sentence number {i}") for i in range(5)]
    rows.append({"custom_id": "bad", "url": "/v1/agents", "body": {"agent_id": "nope"}})
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    async with Simulator(SimConfig()) as sim:
        result = await run_job(settings_for(tmp_path / "out", spec, sim.base_url))
        stats = sim.stats()
    assert result.summary["succeeded"] == 5, result.message
    assert stats["requests"].get("agents") == 5 and "unknown" not in stats["requests"]
    got = rows_of(tmp_path / "out")
    for i in range(5):
        row = got[f"t{i}"]
        assert row["endpoint"] == "agents" and row["model"] == "general_translation"
        answer = orjson.loads(row["response"])
        assert answer["choices"][0]["messages"]["content"]["text"]
        # $3 per million tokens, input and output
        tokens = row["prompt_tokens"] + row["completion_tokens"]
        assert tokens > 0 and row["cost_nano"] == tokens * 3000
    bad = got["bad"]
    assert bad["status"] == "failed" and bad["error_code"] == "invalid_row"
    assert "agent_id must be one of general_translation" in bad["error_message"]
