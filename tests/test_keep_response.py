"""`keep_response="answer"`: a chat completion's choices alone in the checkpoint and the
results, the bill and the counts unchanged."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from jobs import chat_row, settings_for, write_spec
from runner import run_job
from runner.cli import cli
from runner.errors import UsageError
from runner.sim import SimConfig, Simulator
from runner.store import Store


@pytest.mark.anyio
async def test_answer_keeps_the_choices_and_the_bill(tmp_path: Path) -> None:
    rows = [chat_row(i, max_tokens=400) for i in range(40)]
    for row in rows[:10]:  # thinking: reasoning that `answer` drops
        row["body"]["thinking"] = {"type": "enabled"}  # type: ignore[index]
    rows[10]["body"]["max_tokens"] = 3  # type: ignore[index]  # cut: finish_reason length
    rows[11]["body"]["tools"] = [  # type: ignore[index]
        {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    ]
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    async with Simulator(SimConfig(latency=0.0)) as sim:
        full = await run_job(settings_for(tmp_path / "full", spec, sim.base_url))
        slim = await run_job(
            replace(settings_for(tmp_path / "slim", spec, sim.base_url), keep_response="answer")
        )
    assert full.exit_code == slim.exit_code == 0, (full.message, slim.message)
    whole = pq.read_table(tmp_path / "full" / "results.parquet").to_pylist()
    kept = pq.read_table(tmp_path / "slim" / "results.parquet").to_pylist()
    assert len(whole) == len(kept) == 40
    for a, b in zip(whole, kept, strict=True):
        body, answer = orjson.loads(a["response"]), orjson.loads(b["response"])
        assert set(answer) == {"id", "request_id", "choices"}
        assert answer["id"] and answer["request_id"]  # each run's own, as the server gave them
        assert answer["choices"][0]["message"] == {
            k: v for k, v in body["choices"][0]["message"].items() if k != "reasoning_content"
        }
        assert answer["choices"][0]["finish_reason"] == body["choices"][0]["finish_reason"]
        # Usage, cost and ids are columns: the same either way.
        for column in ("prompt_tokens", "completion_tokens", "total_tokens", "cost_nano"):
            assert a[column] == b[column], column
    assert "reasoning_content" in orjson.loads(whole[0]["response"])["choices"][0]["message"]
    assert "tool_calls" in orjson.loads(kept[11]["response"])["choices"][0]["message"]
    full_store = Store(tmp_path / "full" / "checkpoint.sqlite", create=False)
    slim_store = Store(tmp_path / "slim" / "checkpoint.sqlite", create=False)
    try:
        counts = [
            {k: v for k, v in store.summary().items() if k not in ("runs", "settings", "spec")}
            for store in (full_store, slim_store)
        ]
        assert counts[0] == counts[1]
        # The answers cut at max_tokens are still found (the report's group, `retry --finish`).
        cut = (
            "SELECT COUNT(*) FROM rows "
            "WHERE json_extract(response, '$.choices[0].finish_reason') = 'length'"
        )
        assert (
            full_store.db.execute(cut).fetchone() == slim_store.db.execute(cut).fetchone() >= (1,)
        )
        (full_bytes,) = full_store.db.execute("SELECT SUM(LENGTH(response)) FROM rows").fetchone()
        (slim_bytes,) = slim_store.db.execute("SELECT SUM(LENGTH(response)) FROM rows").fetchone()
        assert slim_bytes < 0.8 * full_bytes
        job = slim_store.job()
        assert job is not None and job["settings"]["keep_response"] == "answer"  # for a resume
    finally:
        full_store.close()
        slim_store.close()


def test_the_cli_takes_it_and_refuses_what_it_is_not(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.jsonl", [chat_row(0)])
    result = CliRunner().invoke(
        cli, ["run", str(spec), "--out", str(tmp_path / "o"), "--keep-response", "some"]
    )
    assert result.exit_code == 2 and "'some' is not one of 'full', 'answer'" in result.output


@pytest.mark.anyio
async def test_a_job_file_value_that_is_not_one_is_a_usage_error(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.jsonl", [chat_row(0)])
    settings = replace(settings_for(tmp_path / "o", spec, "http://127.0.0.1:9"), keep_response="x")
    with pytest.raises(UsageError, match="unknown keep_response 'x'"):
        await run_job(settings)
