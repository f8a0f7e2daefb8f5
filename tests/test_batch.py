"""Batch mode against the simulator's Files and Batches APIs, over real HTTP on loopback."""

from __future__ import annotations

import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from simproc import SimProcess

from jobs import KEY, settings_for, write_spec
from jobs import chat_row as shared_chat_row
from runner import run_job
from runner.cli import cli
from runner.job import checkpoint_path
from runner.sim import SimConfig, Simulator
from runner.store import Store

chat_row = functools.partial(shared_chat_row, max_tokens=48)

pytestmark = pytest.mark.anyio


def rows_of(out: Path) -> dict[str, dict[str, Any]]:
    store = Store(checkpoint_path(out))
    try:
        return {r["custom_id"]: r for chunk in store.iter_rows() for r in chunk}
    finally:
        store.close()


def content_of(row: dict[str, Any]) -> Any:
    return [c["message"] for c in orjson.loads(row["response"])["choices"]]


async def test_batch_matches_online_at_half_the_cost(tmp_path: Path) -> None:
    rows = [chat_row(i) for i in range(24)]
    rows[3] = chat_row(3, text="a bad one [[sim:1214]]")
    rows[7] = chat_row(7, model="glm-4.7")  # a second model: its own file
    rows.append(
        {
            "custom_id": "emb-1",
            "url": "/v4/embeddings",
            "body": {"model": "embedding-3", "input": "hello", "dimensions": 256},
        }
    )
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    async with Simulator(SimConfig(batch_seconds=0.3)) as sim:
        online = await run_job(
            settings_for(tmp_path / "online", spec, sim.base_url), handle_signals=False
        )
        sim.reset()
        batch = await run_job(
            settings_for(tmp_path / "batch", spec, sim.base_url, mode="batch", batch_lines=10),
            handle_signals=False,
        )
        stats = sim.stats()
    assert online.exit_code == batch.exit_code == 1, batch.message  # row-3 fails both ways
    assert stats["billed"]["requests"] == 0  # nothing went through the online endpoints
    # 23 rows of glm-4.5-air in files of 10, one of glm-4.7, one of embedding-3.
    assert stats["batch"]["batches"] == stats["batch"]["files"] == 5
    assert stats["batch"]["requests"] == 24 and stats["batch"]["failed"] == 1

    on, off = rows_of(tmp_path / "online"), rows_of(tmp_path / "batch")
    assert on.keys() == off.keys() and len(on) == 25
    for cid, row in on.items():
        other = off[cid]
        assert (row["status"], row["error_code"]) == (other["status"], other["error_code"]), cid
        if row["status"] == "succeeded" and row["endpoint"] == "chat/completions":
            assert content_of(row) == content_of(other), cid
        for col in ("prompt_tokens", "completion_tokens", "total_tokens"):
            assert row[col] == other[col], (cid, col)
        if row["cost_nano"] is not None:
            assert other["cost_nano"] * 2 == row["cost_nano"], cid
        assert other["task_id"].startswith("batch_") or other["error_code"] == "1214"
    assert off["row-3"]["error_code"] == "1214" and off["row-3"]["http_status"] == 400
    assert batch.summary["cost_nano"] * 2 == online.summary["cost_nano"] > 0

    table = pq.read_table(tmp_path / "batch" / "results.parquet")
    assert table.num_rows == 25
    assert set(table.column("custom_id").to_pylist()) == set(on)


async def test_expired_batch_then_retry_failed_online(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.jsonl", [chat_row(i) for i in range(10)])
    out = tmp_path / "out"
    cfg = SimConfig(batch_seconds=0.2, batch_expire_after=4)
    async with Simulator(cfg) as sim:
        first = await run_job(
            settings_for(out, spec, sim.base_url, mode="batch"), handle_signals=False
        )
        assert first.exit_code == 1, first.message
        failed = [r for r in rows_of(out).values() if r["status"] == "failed"]
        assert len(failed) == 6
        assert {r["error_code"] for r in failed} == {"batch_expired"}
        assert "--retry-failed-online" in failed[0]["error_message"]
        second = await run_job(
            settings_for(out, spec, sim.base_url, mode="batch", retry_failed_online=True),
            handle_signals=False,
        )
        stats = sim.stats()
    assert second.exit_code == 0, second.message
    assert (second.summary["succeeded"], second.summary["failed"]) == (10, 0)
    assert stats["batch"]["requests"] == 4 and stats["batch"]["batches"] == 1
    assert stats["billed"]["requests"] == 6  # only the expired rows went online
    assert not stats["duplicates"]["fingerprint"]


async def test_resume_closes_the_upload_and_create_windows(tmp_path: Path) -> None:
    """A run that died after POST files / POST batches but before committing the ids: the
    resume finds the file by its name and the batch by its input_file_id, never paying twice."""
    spec = write_spec(tmp_path / "spec.jsonl", [chat_row(i) for i in range(6)])
    out = tmp_path / "out"

    def batches() -> list[dict[str, Any]]:
        store = Store(checkpoint_path(out))
        try:
            return store.batches()
        finally:
            store.close()

    async with Simulator(SimConfig(batch_seconds=60)) as sim:
        settings = settings_for(out, spec, sim.base_url, mode="batch", batch_lines=3)
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(functools.partial(run_job, settings, handle_signals=False))
                while not (bs := batches()) or any(b["state"] != "created" for b in bs):
                    await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
        first = batches()
        assert [b["state"] for b in first] == ["created", "created"]
        # Online mode over the same folder leaves rows that open batches hold alone.
        online = await run_job(replace(settings, mode="online"), handle_signals=False)
        assert online.exit_code == 3 and online.summary["in_progress"] == 6
        assert sim.stats()["billed"]["requests"] == 0
        store = Store(checkpoint_path(out))
        try:
            # File 1 died inside the upload window (no batch can exist for it then: the
            # original batch stands in for one made by another tool); file 2 inside the
            # create window.
            store.update_batch(1, state="uploading", file_id=None, batch_id=None)
            store.update_batch(2, state="creating", batch_id=None)
        finally:
            store.close()
        sim.update(batch_seconds=0.2)
        result = await run_job(settings, handle_signals=False)
        stats = sim.stats()
    assert result.exit_code == 0, result.message
    after = batches()
    assert stats["batch"]["files"] == 2  # file 1 was found by name, not uploaded again
    assert after[0]["file_id"] == first[0]["file_id"]
    assert after[1]["batch_id"] == first[1]["batch_id"]  # batch 2 was found, not re-created
    assert stats["batch"]["batches"] == 3  # the one new batch is file 1's


async def test_sim_files_and_batches_api(tmp_path: Path) -> None:
    line = orjson.dumps(chat_row(1)) + b"\n"
    async with Simulator(SimConfig(batch_seconds=0.2)) as sim:
        auth = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(base_url=sim.base_url + "/", headers=auth) as c:
            r = await c.post("files", data={"purpose": "batch"}, files={"file": ("a.jsonl", line)})
            assert r.status_code == 200, r.text
            file_id = r.json()["id"]
            assert r.json()["bytes"] == len(line) and r.json()["purpose"] == "batch"
            r = await c.get(f"files/{file_id}/content")
            assert r.content == line
            ids = []
            for _ in range(3):
                r = await c.post(
                    "batches",
                    json={"input_file_id": file_id, "endpoint": "/v4/chat/completions"},
                )
                assert r.json()["status"] == "validating"
                ids.append(r.json()["id"])
            # Newest first, two per page, with the `after` cursor.
            page = (await c.get("batches", params={"limit": 2})).json()
            assert [b["id"] for b in page["data"]] == ids[::-1][:2] and page["has_more"]
            page = (await c.get("batches", params={"limit": 2, "after": page["last_id"]})).json()
            assert [b["id"] for b in page["data"]] == [ids[0]] and not page["has_more"]
            r = await c.post(f"batches/{ids[2]}/cancel")
            assert r.json()["status"] == "cancelling"
            await anyio.sleep(0.25)
            done = {i: (await c.get(f"batches/{i}")).json() for i in ids}
            assert done[ids[2]]["status"] == "cancelled"
            assert done[ids[0]]["status"] == "completed"
            assert done[ids[0]]["request_counts"] == {"total": 1, "completed": 1, "failed": 0}
            out = (await c.get(f"files/{done[ids[0]]['output_file_id']}/content")).content
            answer = orjson.loads(out)
            assert answer["custom_id"] == "row-1" and answer["response"]["status_code"] == 200
            # Another key sees none of it.
            other = {"Authorization": "Bearer someone-else"}
            assert (await c.get(f"batches/{ids[0]}", headers=other)).status_code == 404
            assert (await c.delete(f"files/{file_id}")).json()["deleted"] is True
            assert (await c.get(f"files/{file_id}/content")).status_code == 404
            r = await c.post("files", data={"purpose": "fine-tune"}, files={"file": ("x", b"")})
            assert r.status_code == 400


def _batch_ids(out: Path) -> list[str | None]:
    path = checkpoint_path(out)
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return [r[0] for r in conn.execute("SELECT batch_id FROM batches ORDER BY key")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def test_kill_9_mid_poll_then_resume_creates_no_second_batch(tmp_path: Path) -> None:
    sim = SimProcess()
    spec = write_spec(tmp_path / "spec.jsonl", [chat_row(i) for i in range(25)])
    out = tmp_path / "out"
    env = {**os.environ, "ZAI_API_KEY": KEY}
    run = [sys.executable, "-m", "runner", "run", str(spec), "--out", str(out)]
    run += ["--base-url", sim.base_url, "--mode", "batch", "--batch-lines", "10", "--no-progress"]
    try:
        sim.configure(batch_seconds=2.0)
        proc = subprocess.Popen(run, env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ids = _batch_ids(out)
            if len(ids) == 3 and all(ids):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the job finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = sim.get(sim.base_url + "/batches?limit=100", KEY)["data"]
        assert len(before) == 3
        r = subprocess.run(
            [sys.executable, "-m", "runner", "resume", str(out), "--no-progress"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert KEY not in r.stderr
        after = sim.get(sim.base_url + "/batches?limit=100", KEY)["data"]
        stats = sim.get(sim.root + "/_sim/stats")
    finally:
        sim.stop()
    assert sorted(b["id"] for b in after) == sorted(b["id"] for b in before)
    assert {b["status"] for b in after} == {"completed"}
    assert stats["batch"]["batches"] == stats["batch"]["files"] == 3
    assert stats["batch"]["requests"] == 25
    assert stats["billed"]["requests"] == 0
    s = rows_of(out)
    assert len(s) == 25 and {r["status"] for r in s.values()} == {"succeeded"}
    assert KEY.encode() not in checkpoint_path(out).read_bytes()
    status = CliRunner().invoke(cli, ["status", str(out), "--json"])
    batches = json.loads(status.output)["batches"]
    assert [b["state"] for b in batches] == ["merged"] * 3
    assert sorted(b["batch_id"] for b in batches) == sorted(b["id"] for b in after)
