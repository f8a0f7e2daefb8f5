"""The core runner against the simulator over real HTTP on loopback."""

from __future__ import annotations

import functools
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from jobs import KEY, chat_row, write_spec
from jobs import settings_for as shared_settings_for
from runner import RetryConfig, run_job
from runner.export import write_results_jsonl
from runner.job import checkpoint_path
from runner.sim import SimConfig, Simulator
from runner.store import Store

# These jobs run more rows per test than the shared default of 8 in flight suits.
settings_for = functools.partial(shared_settings_for, concurrency=20)

pytestmark = pytest.mark.anyio


async def test_chat_job_completes_and_reconciles_with_ledger(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.jsonl", [chat_row(i) for i in range(200)])
    async with Simulator(SimConfig(latency=0.01)) as sim:
        result = await run_job(
            settings_for(tmp_path / "out", spec, sim.base_url), handle_signals=False
        )
        stats = sim.stats()
    assert result.exit_code == 0, result.message
    s = result.summary
    assert (s["total"], s["succeeded"], s["failed"], s["pending"]) == (200, 200, 0, 0)
    billed = stats["billed"]
    assert s["tokens"]["prompt_tokens"] == billed["prompt_tokens"]
    assert s["tokens"]["completion_tokens"] == billed["completion_tokens"]
    assert billed["requests"] == 200
    assert not stats["duplicates"]["fingerprint"]
    # glm-4.5-air: 0.2 USD / M input, 1.1 USD / M output, exact in nano-units.
    expected = billed["prompt_tokens"] * 200 + billed["completion_tokens"] * 1100
    assert s["cost_nano"] == expected

    table = pq.read_table(tmp_path / "out" / "results.parquet")
    for col in (
        "custom_id",
        "status",
        "model",
        "response",
        "error_code",
        "error_message",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cost",
        "latency_s",
    ):
        assert col in table.column_names
    assert table.num_rows == 200
    first = table.slice(0, 1).to_pylist()[0]
    assert first["custom_id"] == "row-0"
    assert orjson.loads(first["response"])["choices"][0]["message"]["content"]


async def test_peak_in_flight_never_exceeds_cap_and_reaches_it(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.jsonl", [chat_row(i) for i in range(300)])
    async with Simulator(SimConfig(latency=0.05, concurrency_limit=25)) as sim:
        result = await run_job(
            settings_for(tmp_path / "out", spec, sim.base_url, concurrency=25), handle_signals=False
        )
        stats = sim.stats()
    assert result.exit_code == 0
    assert stats["faults"].get("1302", 0) == 0
    peaks = [p for per_key in stats["peak_concurrency"].values() for p in per_key.values()]
    assert max(peaks) == 25


async def test_mixed_models_each_respect_their_cap(tmp_path: Path) -> None:
    rows = [chat_row(i, model="glm-4.5-air" if i % 2 else "glm-4.7") for i in range(200)]
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    cfg = SimConfig(latency=0.03, model_limits={"glm-4.5-air": 6, "glm-4.7": 9})
    async with Simulator(cfg) as sim:
        settings = settings_for(
            tmp_path / "out",
            spec,
            sim.base_url,
            concurrency=None,
            model_concurrency={"glm-4.5-air": 6, "glm-4.7": 9},
        )
        result = await run_job(settings, handle_signals=False)
        stats = sim.stats()
    assert result.exit_code == 0
    assert stats["faults"].get("1302", 0) == 0
    (per_model,) = stats["peak_concurrency"].values()
    assert per_model == {"glm-4.5-air": 6, "glm-4.7": 9}


async def test_row_errors_fail_only_their_rows(tmp_path: Path) -> None:
    rows = [chat_row(i) for i in range(20)]
    rows[3] = chat_row(3, text="please [[sim:1301]] this")
    rows[7] = chat_row(7, text="bad [[sim:1214]] value")
    rows[9] = chat_row(9, text="output [[sim:sensitive]] filtered")
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    with (tmp_path / "spec.jsonl").open("ab") as f:
        f.write(b'{"custom_id": "broken", "body": \n')
    async with Simulator(SimConfig()) as sim:
        result = await run_job(
            settings_for(tmp_path / "out", spec, sim.base_url), handle_signals=False
        )
    assert result.exit_code == 1
    store = Store(checkpoint_path(tmp_path / "out"))
    try:
        assert store.get("row-3")["error_code"] == "1301"
        assert store.get("row-7")["error_code"] == "1214"
        sensitive = store.get("row-9")
        assert sensitive["status"] == "failed" and sensitive["error_code"] == "1301"
        assert sensitive["prompt_tokens"] > 0  # billed though failed: the cost is kept
        bad = store.get("line-21")
        assert bad["error_code"] == "invalid_row" and "line 21" in bad["error_message"]
        assert store.summary()["succeeded"] == 17
    finally:
        store.close()


async def test_transient_faults_are_retried_to_success(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.jsonl", [chat_row(i) for i in range(150)])
    cfg = SimConfig(rate_429=0.2, rate_500=0.05, rate_503=0.05, rate_drop=0.03, seed=7)
    async with Simulator(cfg) as sim:
        result = await run_job(
            settings_for(tmp_path / "out", spec, sim.base_url), handle_signals=False
        )
        stats = sim.stats()
    assert result.exit_code == 0, result.message
    assert result.summary["succeeded"] == 150
    assert result.counters.retries > 0
    # A connection dropped after the platform did the work is billed and lost in transit;
    # a synchronous API gives no way to fetch that answer, so only those rows are re-billed.
    drops = stats["faults"]["drop"]
    assert 150 <= stats["billed"]["requests"] <= 150 + drops
    assert len(stats["duplicates"]["fingerprint"]) <= drops


async def test_rate_limit_below_configured_tier_converges(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.jsonl", [chat_row(i) for i in range(300)])
    async with Simulator(SimConfig(latency=0.02, concurrency_limit=10)) as sim:
        # Real (small) backoff: with zero waits a row could spend its whole rate-limit
        # budget inside one cool-down window of the adaptive limiter.
        retry = RetryConfig(initial_wait=0.02, max_wait=0.2, jitter=0.02)
        result = await run_job(
            settings_for(tmp_path / "out", spec, sim.base_url, concurrency=40, retry=retry),
            handle_signals=False,
        )
        stats = sim.stats()
    assert result.exit_code == 0
    assert stats["faults"]["1302"] > 0
    assert stats["billed"]["requests"] == 300


async def test_balance_exhausted_stops_then_resumes_without_double_billing(
    tmp_path: Path,
) -> None:
    spec = write_spec(tmp_path / "spec.jsonl", [chat_row(i) for i in range(120)])
    async with Simulator(SimConfig(balance_requests=50)) as sim:
        settings = settings_for(tmp_path / "out", spec, sim.base_url, concurrency=5)
        first = await run_job(settings, handle_signals=False)
        assert first.exit_code == 3
        assert "1113" in first.message and "resume" in first.message
        assert first.summary["succeeded"] == 50
        assert sim.stats()["statuses"].get("429", 0) <= 5  # in-flight only: no retry loop
        sim.update(balance_requests=None)
        second = await run_job(settings, handle_signals=False)
        stats = sim.stats()
    assert second.exit_code == 0
    assert second.summary["succeeded"] == 120
    assert stats["billed"]["requests"] == 120
    assert not stats["duplicates"]["fingerprint"]


async def test_bad_key_stops_job_with_advice_and_no_key_in_message(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.jsonl", [chat_row(i) for i in range(10)])
    async with Simulator(SimConfig(keys={"the-only-good-key": None})) as sim:
        result = await run_job(
            settings_for(tmp_path / "out", spec, sim.base_url), handle_signals=False
        )
    assert result.exit_code == 3
    assert "ZAI_API_KEY" in result.message
    assert KEY not in result.message


async def test_budget_stop_is_resumable(tmp_path: Path) -> None:
    rows = [chat_row(i) for i in range(100)]
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    async with Simulator(SimConfig()) as sim:
        settings = settings_for(
            tmp_path / "out", spec, sim.base_url, concurrency=4, max_cost=Decimal("0.0003")
        )
        first = await run_job(settings, handle_signals=False)
        assert first.exit_code == 3
        assert "max-cost" in first.message
        assert 0 < first.summary["succeeded"] < 100
        assert first.summary["cost_nano"] <= 300_000
        second = await run_job(replace(settings, max_cost=None), handle_signals=False)
    assert second.exit_code == 0
    assert second.summary["succeeded"] == 100


async def test_changed_spec_is_refused_unless_forced(tmp_path: Path) -> None:
    from runner import UsageError

    spec = write_spec(tmp_path / "spec.jsonl", [chat_row(i) for i in range(5)])
    async with Simulator(SimConfig()) as sim:
        settings = settings_for(tmp_path / "out", spec, sim.base_url)
        assert (await run_job(settings, handle_signals=False)).exit_code == 0
        write_spec(spec, [chat_row(i) for i in range(6)])
        with pytest.raises(UsageError, match="spec changed"):
            await run_job(settings, handle_signals=False)
        forced = await run_job(replace(settings, force=True), handle_signals=False)
    assert forced.summary["succeeded"] == 6


async def test_export_jsonl_is_batch_api_output(tmp_path: Path) -> None:
    rows = [chat_row(0), chat_row(1, text="x [[sim:1214]]")]
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    async with Simulator(SimConfig()) as sim:
        await run_job(settings_for(tmp_path / "out", spec, sim.base_url), handle_signals=False)
    store = Store(checkpoint_path(tmp_path / "out"))
    try:
        write_results_jsonl(store, tmp_path / "out.jsonl")
    finally:
        store.close()
    lines = [orjson.loads(x) for x in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    ok, bad = lines
    assert ok["custom_id"] == "row-0" and ok["response"]["status_code"] == 200
    assert ok["response"]["body"]["choices"]
    assert bad["custom_id"] == "row-1" and bad["error"]["code"] == "1214"


async def test_secret_never_written(tmp_path: Path) -> None:
    rows = [chat_row(i) for i in range(20)] + [chat_row(99, text="[[sim:1214]]")]
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    async with Simulator(SimConfig(balance_requests=15)) as sim:
        result = await run_job(
            settings_for(tmp_path / "out", spec, sim.base_url), handle_signals=False
        )
    assert KEY not in result.message and KEY not in repr(result)
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


async def test_a_duplicate_after_a_resume_is_still_a_duplicate(tmp_path: Path) -> None:
    """A resume skips finished rows without parsing them, yet a pending row that repeats a
    skipped row's custom_id (one that succeeded, one that was invalid but claimed its id)
    is still refused as a duplicate, is never sent, and leaves the first row's result."""
    rows = [chat_row(i) for i in range(2100)]
    rows[8] = {**chat_row(8), "body": {"messages": [{"role": "user", "content": "no model"}]}}
    rows[2060] = {**chat_row(2060), "custom_id": "row-5"}
    rows[2070] = {**chat_row(2070), "custom_id": "row-8"}
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    out = tmp_path / "out"
    # The first run stops (balance) after 1,100 answers: the reader is then in its second
    # batch of 1,024 rows and has never read the two repeats.
    async with Simulator(SimConfig(latency=0.0, balance_requests=1100)) as sim:
        first = await run_job(settings_for(out, spec, sim.base_url), handle_signals=False)
    assert first.exit_code == 3, first.message
    store = Store(checkpoint_path(out))
    try:
        assert store.get("row-5") is not None and store.get("row-8") is not None
        assert not {r["seq"] for chunk in store.iter_rows() for r in chunk} & {2060, 2070}
    finally:
        store.close()
    async with Simulator(SimConfig(latency=0.0)) as sim:
        second = await run_job(settings_for(out, spec, sim.base_url), handle_signals=False)
        billed = sim.stats()["billed"]["requests"]
    assert second.exit_code == 1, second.message
    assert second.summary["succeeded"] == 2100 - 3
    assert billed == 2100 - 3 - first.summary["succeeded"]
    store = Store(checkpoint_path(out))
    try:
        by_seq = {r["seq"]: r for chunk in store.iter_rows() for r in chunk}
    finally:
        store.close()
    assert by_seq[5]["custom_id"] == "row-5" and by_seq[5]["status"] == "succeeded"
    for seq, cid in ((2060, "row-5"), (2070, "row-8")):
        # Stored under its line's id, never the id it repeated.
        assert by_seq[seq]["status"] == "failed" and by_seq[seq]["custom_id"] == f"line-{seq + 1}"
        assert f"duplicate custom_id '{cid}'" in by_seq[seq]["error_message"]
