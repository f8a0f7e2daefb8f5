"""Several keys in one job: each an account with its own limit and balance (issue 13).

Every job here runs as a user runs it (`python -m runner run`, keys in the environment)
against the simulator as its own process, so the keys travel over real HTTP and the scans
for leaked keys read exactly what a user's disk and console would hold.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
import reliability_harness as h

from jobs import settings_for
from runner import run_job
from runner.cost import NANO
from runner.job import checkpoint_path
from runner.keys import KeySpec, key_fingerprint, key_label, load_keys_file
from runner.settings import Settings, load_job_file
from runner.sim import SimConfig, Simulator
from runner.sim.config import apply_updates, key_id, public_view
from runner.store import Store

ROOT = Path(__file__).resolve().parents[1]
# Keys with recognisable secret parts; the last four characters are all a label shows.
KEY_A = "pool-key-A-1b2c3d4e.SECRET-AAAA-wxyz"
KEY_B = "pool-key-B-5f6a7b8c.SECRET-BBBB-qrst"
KEY_C = "pool-key-C-9d0e1f2a.SECRET-CCCC-mnop"
POOL = (KEY_A, KEY_B, KEY_C)


def run(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in h.runner_env().items() if not k.endswith("_API_KEY")}
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        env={**base, **env}, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )  # fmt: skip


def chat_spec(path: Path, n: int) -> Path:
    return h.write_spec(path, (h.chat_line(f"c{i}", f"pool row {i}") for i in range(n)))


def scan_for_keys(root: Path, texts: list[str], keys: tuple[str, ...]) -> None:
    """No key, nor any part of one beyond its last four characters, in a file or a text."""
    secret_parts = [k[:-4] for k in keys] + [k.split(".")[1][:-5] for k in keys]
    for p in (p for p in root.rglob("*") if p.is_file()):
        data = p.read_bytes()
        for part in secret_parts:
            assert part.encode() not in data, p
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq

            texts.append(repr(pq.read_table(p).to_pylist()))
    for text in texts:
        for part in secret_parts:
            assert part not in text, text[:500]


def test_labels_and_fingerprints_show_no_secret() -> None:
    assert key_label(2, KEY_B) == "key #2 (...qrst)"
    assert key_label(1, "short-key").startswith("key #1 (sha:")
    assert key_fingerprint(KEY_A) == key_id(KEY_A)  # the simulator's key id: comparable
    assert len(key_fingerprint(KEY_A)) == 12 and KEY_A not in key_fingerprint(KEY_A)


def test_keys_come_from_a_variable_or_a_keys_file(tmp_path: Path) -> None:
    settings = Settings(spec=tmp_path / "s.jsonl", out=tmp_path / "o", provider="zai")
    pooled = settings.with_key_from_env({"ZAI_API_KEY": f"{KEY_A}, {KEY_B},"})
    assert [k.label for k in pooled.key_pool] == ["key #1 (...wxyz)", "key #2 (...qrst)"]
    assert pooled.api_key.reveal() == KEY_A
    assert KEY_B not in repr(pooled) and KEY_B not in json.dumps(pooled.to_record(), default=str)
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(
        '[[keys]]\nenv = "TEAM_A"\ntier = "V2"\n'
        '[[keys]]\nenv = "TEAM_B"\nconcurrency = 7\nmodel_concurrency = { "glm-4.5-air" = 3 }\n'
    )
    specs = load_keys_file(keys_file)
    filed = Settings(spec=tmp_path / "s.jsonl", out=tmp_path / "o", keys=specs)
    filed = filed.with_key_from_env({"TEAM_A": KEY_A, "TEAM_B": KEY_B})
    a, b = filed.key_pool
    assert filed.cap_for("glm-4.5-air", a.spec) == 300  # V2
    assert filed.cap_for("glm-4.5-air", b.spec) == 3
    assert filed.cap_for("glm-4-plus", b.spec) == 7
    record = filed.to_record()
    assert record["keys"][0] == {**specs[0].to_record()}  # variables and settings, no secret
    assert Settings.from_record(record).keys == specs
    with pytest.raises(Exception, match="TEAM_B"):
        Settings(spec=tmp_path / "s", out=tmp_path / "o", keys=specs).with_key_from_env(
            {"TEAM_A": KEY_A}
        )
    with pytest.raises(Exception, match="same key"):
        settings.with_key_from_env({"ZAI_API_KEY": f"{KEY_A},{KEY_A}"})
    job = tmp_path / "job.toml"
    job.write_text('spec = "s.jsonl"\nout = "o"\n[[keys]]\nenv = "TEAM_A"\nrpm = 60\n')
    assert load_job_file(job)["keys"] == (KeySpec(env="TEAM_A", rpm=60),)
    bad = tmp_path / "bad.toml"
    bad.write_text('[[keys]]\nkey = "sk-123"\n')
    with pytest.raises(Exception, match="never the keys themselves"):
        load_keys_file(bad)


def test_two_keys_one_runs_dry_the_job_goes_on(tmp_path: Path) -> None:
    """Key B's balance runs out: it is retired with one line, A answers the rest, exit 0;
    status shows both keys, their rows and costs adding up to the total."""
    spec = chat_spec(tmp_path / "spec.jsonl", 200)
    out = tmp_path / "out"
    with h.SimProcess(
        "--latency", "0.02", "--api-key", f"{KEY_A}:6", "--api-key", f"{KEY_B}:6",
        "--key-balance", f"{KEY_B}=40",
    ) as sim:  # fmt: skip
        r = run(
            "run", str(spec), "--out", str(out), "--base-url", sim.base_url,
            "--no-progress", "--concurrency", "6",
            env={"ZAI_API_KEY": f"{KEY_A},{KEY_B}"},
        )  # fmt: skip
        stats = sim.stats()
    assert r.returncode == 0, r.stderr[-3000:]
    assert "key #2 (...qrst) retired for this run" in r.stderr
    assert r.stderr.count("retired for this run") == 1
    a, b = stats["by_key"][key_id(KEY_A)], stats["by_key"][key_id(KEY_B)]
    assert b["billed"] == 40 and a["billed"] == 160
    assert stats["billed"]["requests"] == 200  # every row answered once
    texts = [r.stdout, r.stderr]
    st = run("status", str(out), env={})
    texts += [st.stdout, st.stderr]
    assert "key #2 (...qrst)" in st.stdout and "retired" in st.stdout
    js = run("status", str(out), "--json", env={})
    texts.append(js.stdout)
    data = json.loads(js.stdout)
    keys = data["keys"]
    assert keys["key #1 (...wxyz)"]["state"] == "active"
    assert keys["key #2 (...qrst)"]["state"] == "retired"
    assert "1113" in keys["key #2 (...qrst)"]["reason"]
    assert keys["key #1 (...wxyz)"]["rows"] + keys["key #2 (...qrst)"]["rows"] == 200
    assert keys["key #2 (...qrst)"]["rows"] == 40
    total = Decimal(data["cost"]["total_exact"]) * NANO
    assert total > 0 and sum(k["cost_nano"] for k in keys.values()) == total
    scan_for_keys(tmp_path, texts, (KEY_A, KEY_B))


def test_a_key_the_platform_does_not_know_is_retired_and_the_job_goes_on(
    tmp_path: Path,
) -> None:
    spec = chat_spec(tmp_path / "spec.jsonl", 40)
    out = tmp_path / "out"
    with h.SimProcess("--api-key", KEY_A) as sim:  # KEY_C: an unknown key, HTTP 401
        r = run(
            "run", str(spec), "--out", str(out), "--base-url", sim.base_url,
            "--no-progress", "--concurrency", "4", env={"ZAI_API_KEY": f"{KEY_C},{KEY_A}"},
        )  # fmt: skip
        stats = sim.stats()
    assert r.returncode == 0, r.stderr[-3000:]
    assert "key #1 (...mnop) retired for this run" in r.stderr, r.stderr
    assert stats["billed"]["requests"] == 40
    st = run("status", str(out), env={})
    assert "key #1 (...mnop): 0 rows" in st.stdout and "retired" in st.stdout, st.stdout
    scan_for_keys(tmp_path, [r.stdout, r.stderr, st.stdout], (KEY_A, KEY_C))


def test_every_key_retired_stops_resumable_and_a_recharged_key_comes_back(
    tmp_path: Path,
) -> None:
    spec = chat_spec(tmp_path / "spec.jsonl", 60)
    out = tmp_path / "out"
    env = {"ZAI_API_KEY": f"{KEY_A},{KEY_B}"}
    with h.SimProcess(
        "--api-key", KEY_A, "--api-key", KEY_B,
        "--key-balance", f"{KEY_A}=10", "--key-balance", f"{KEY_B}=15",
    ) as sim:  # fmt: skip
        args = ("run", str(spec), "--out", str(out), "--base-url", sim.base_url, "--no-progress")
        r = run(*args, "--concurrency", "3", env=env)
        assert r.returncode == 3, r.stderr[-3000:]
        assert "every key is retired" in r.stderr and "top up" in r.stderr
        assert "runner resume" in r.stderr
        sim.configure(key_balances={KEY_B: 1000})  # B recharged
        r2 = run("resume", str(out), env=env)
        stats = sim.stats()
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert stats["billed"]["requests"] == 60
    scan_for_keys(tmp_path, [r.stdout, r.stderr, r2.stdout, r2.stderr], (KEY_A, KEY_B))


def _sample(sim: h.SimProcess, stop: threading.Event, seen: list[dict[str, int]]) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError):
            seen.append(dict(sim.stats()["in_flight_by_key"]))
        time.sleep(0.05)


def test_three_keys_each_at_its_own_limit_one_runs_dry(tmp_path: Path) -> None:
    """The issue's acceptance job: 3,000 rows over A (limit 30), B (20, balance 300) and C
    (12), the runner told --concurrency 30 for all."""
    spec = chat_spec(tmp_path / "spec.jsonl", 3000)
    out = tmp_path / "out"
    with h.SimProcess(
        "--latency", "0.1", "--no-ledger-ids",
        "--api-key", f"{KEY_A}:30", "--api-key", f"{KEY_B}:20", "--api-key", f"{KEY_C}:12",
        "--key-balance", f"{KEY_B}=300",
    ) as sim:  # fmt: skip
        stop, seen = threading.Event(), []
        sampler = threading.Thread(target=_sample, args=(sim, stop, seen))
        sampler.start()
        try:
            r = run(
                "run",
                str(spec),
                "--out",
                str(out),
                "--base-url",
                sim.base_url,
                "--concurrency",
                "30",
                env={"ZAI_API_KEY": ",".join(POOL)},
            )  # fmt: skip (the progress display on: its output is scanned too)
        finally:
            stop.set()
            sampler.join()
        stats = sim.stats()
    assert r.returncode == 0, r.stderr[-3000:]
    a, b, c = (stats["by_key"][key_id(k)] for k in POOL)
    assert stats["billed"]["requests"] == 3000  # every row answered once
    assert b["billed"] <= 300 + 20
    # Few requests to B after its first 1113 (those already on their way when it came).
    assert b.get("1113", 0) <= 20, b
    # A and C both near their real limits at the same moments: over the samples taken
    # while all three keys' rows flowed, the median in flight of each.
    both = sorted(
        (s.get(key_id(KEY_A), 0), s.get(key_id(KEY_C), 0))
        for s in seen
        if s.get(key_id(KEY_A), 0) or s.get(key_id(KEY_C), 0)
    )
    assert len(both) >= 10
    mid = len(both) // 2
    a_mid = sorted(x for x, _ in both)[mid]
    c_mid = sorted(y for _, y in both)[mid]
    print(f"A {a}, B {b}, C {c}; median in flight A {a_mid}, C {c_mid} ({len(both)} samples)")
    assert a_mid >= 24 and c_mid >= 10, (a_mid, c_mid, a, c)
    st = run("status", str(out), "--json", env={})
    keys = json.loads(st.stdout)["keys"]
    assert keys["key #2 (...qrst)"]["state"] == "retired"
    assert sum(k["rows"] for k in keys.values()) == 3000
    scan_for_keys(tmp_path, [r.stdout, r.stderr, st.stdout, st.stderr], POOL)


# -- things that belong to an account stay with it -------------------------------------------


def _pool_settings(tmp_path: Path, rows: list[dict[str, Any]], base_url: str, **kw: Any) -> Any:
    spec = h.write_spec(tmp_path / "spec.jsonl", rows)
    settings = settings_for(tmp_path / "out", spec, base_url, **kw)
    return settings.with_key_from_env({"ZAI_API_KEY": f"{KEY_A},{KEY_B}"})


def _key_fps(out: Path, table: str = "rows") -> dict[str | None, int]:
    store = Store(checkpoint_path(out))
    try:
        sql = f"SELECT key_fp, COUNT(*) FROM {table} GROUP BY key_fp"
        return {fp: int(n) for fp, n in store.db.execute(sql)}
    finally:
        store.close()


@pytest.mark.anyio
async def test_async_tasks_are_polled_with_the_key_that_created_them(tmp_path: Path) -> None:
    """The simulator answers 404 to a poll by another key: every task must succeed."""
    rows: list[dict[str, Any]] = [
        {
            "custom_id": f"v{i}",
            "url": "/v4/videos/generations",
            "body": {"model": "cogvideox-3", "prompt": f"clip {i}"},
        }
        for i in range(12)
    ]
    config = SimConfig(task_seconds=0.2, keys={KEY_A: 2, KEY_B: 2})
    async with Simulator(config) as sim:
        settings = _pool_settings(tmp_path, rows, sim.base_url, concurrency=2, download=False)
        result = await run_job(settings, handle_signals=False)
    assert result.exit_code == 0, result.message
    fps = _key_fps(tmp_path / "out")
    assert set(fps) == {key_fingerprint(KEY_A), key_fingerprint(KEY_B)}, fps


@pytest.mark.anyio
async def test_batches_are_read_with_the_key_that_created_them(tmp_path: Path) -> None:
    """Batch files go to the keys in turn; each batch is polled and read with its own key
    (the simulator hides a key's files and batches from the others)."""
    rows = [h.chat_line(f"c{i}", f"batch row {i}") for i in range(40)]
    config = SimConfig(batch_seconds=0.3, keys={KEY_A: None, KEY_B: None})
    async with Simulator(config) as sim:
        settings = _pool_settings(tmp_path, rows, sim.base_url, mode="batch", batch_lines=10)
        result = await run_job(settings, handle_signals=False)
    assert result.exit_code == 0, result.message
    out = tmp_path / "out"
    both = {key_fingerprint(KEY_A): 2, key_fingerprint(KEY_B): 2}
    assert _key_fps(out, "batches") == both
    assert _key_fps(out) == {fp: 20 for fp in both}
    scan_for_keys(tmp_path, [], (KEY_A, KEY_B))


@pytest.mark.anyio
async def test_each_key_keeps_to_its_own_cap_from_the_keys_file(tmp_path: Path) -> None:
    rows = [h.chat_line(f"c{i}", f"capped row {i}") for i in range(120)]
    specs = (KeySpec(env="TEAM_A", concurrency=3), KeySpec(env="TEAM_B", concurrency=5))
    async with Simulator(SimConfig(latency=0.05)) as sim:
        spec = h.write_spec(tmp_path / "spec.jsonl", rows)
        settings = settings_for(tmp_path / "out", spec, sim.base_url, keys=specs)
        settings = settings.with_key_from_env({"TEAM_A": KEY_A, "TEAM_B": KEY_B})
        result = await run_job(settings, handle_signals=False)
        stats = sim.stats()
    assert result.exit_code == 0, result.message
    peaks = stats["peak_concurrency"]
    assert peaks[key_id(KEY_A)]["glm-4.5-air"] == 3
    assert peaks[key_id(KEY_B)]["glm-4.5-air"] == 5


def test_the_simulator_shows_key_balances_by_key_id_only() -> None:
    config = apply_updates(SimConfig(), {"key_balances": {KEY_B: 300}})
    view = json.dumps(public_view(config))
    assert key_id(KEY_B) in view and KEY_B not in view and "300" in view
    assert KEY_B not in repr(config)
    with pytest.raises(ValueError, match="key_balances"):
        apply_updates(SimConfig(), {"key_balances": {KEY_B: -1}})


def test_each_key_has_its_own_per_minute_buckets(tmp_path: Path) -> None:
    from runner.accounts import Accounts

    specs = (KeySpec(env="TEAM_A", rpm=60), KeySpec(env="TEAM_B"))
    settings = Settings(spec=tmp_path / "s", out=tmp_path / "o", keys=specs, tpm=1000)
    settings = settings.with_key_from_env({"TEAM_A": KEY_A, "TEAM_B": f"{KEY_B},{KEY_C}"})
    pool = Accounts(settings, [object(), object(), object()])  # type: ignore[list-item]
    a, b, c = pool.items
    assert a.rate is not None and b.rate is not None and c.rate is not None
    assert a.rate.rpm == 60 and b.rate.rpm is None and a.rate.tpm == b.rate.tpm == 1000
    assert a.rate is not b.rate is not c.rate  # one account's minute is not another's
    assert [x.label for x in pool.items] == [
        "key #1 (...wxyz)", "key #2 (...qrst)", "key #3 (...mnop)",
    ]  # fmt: skip


@pytest.mark.anyio
async def test_a_key_refused_while_polling_leaves_its_tasks_for_the_resume(
    tmp_path: Path,
) -> None:
    """B's key stops working after its tasks were submitted: B is retired, A's tasks finish,
    the job stops resumable (exit 3); with B back, the resume polls B's tasks (never
    submitting again)."""
    rows: list[dict[str, Any]] = [
        {
            "custom_id": f"v{i}",
            "url": "/v4/videos/generations",
            "body": {"model": "cogvideox-3", "prompt": f"clip {i}"},
        }
        for i in range(8)
    ]
    both = {KEY_A: None, KEY_B: None}
    async with Simulator(SimConfig(task_seconds=1.0, keys=both)) as sim:
        settings = _pool_settings(tmp_path, rows, sim.base_url, concurrency=4, download=False)

        async def take_b_away() -> None:
            await anyio.sleep(0.4)
            sim.update(keys={KEY_A: None})

        async with anyio.create_task_group() as tg:
            tg.start_soon(take_b_away)
            first = await run_job(settings, handle_signals=False)
        assert first.exit_code == 3, first.message
        sim.update(keys=both)
        second = await run_job(settings, handle_signals=False)
        stats = sim.stats()
    assert second.exit_code == 0, second.message
    assert stats["tasks"]["submitted"] == 8  # B's tasks were polled again, not resubmitted
    fps = _key_fps(tmp_path / "out")
    assert set(fps) == {key_fingerprint(KEY_A), key_fingerprint(KEY_B)}, fps
