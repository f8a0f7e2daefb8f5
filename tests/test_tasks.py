"""Async tasks against the simulator over real HTTP: submitted once, polled, downloaded.

The crash test runs `runner run` and the simulator as real processes and SIGKILLs the runner
at random moments, then reads the simulator's ledger: every request_id submitted exactly
once (at most once for rows failed as 'submit_unknown'), every row with one final result.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from jobs import settings_for, write_spec
from runner import run_job
from runner.artifacts import ARTIFACTS_DIR, Item, artifact_name, safe_stem
from runner.job import checkpoint_path
from runner.sim import SimConfig, Simulator
from runner.store import Store

FAIL = "[[sim:task-fail]]"


def video(cid: str, prompt: str = "waves on a beach") -> dict[str, Any]:
    body = {"model": "cogvideox-3", "prompt": prompt}
    return {"custom_id": cid, "method": "POST", "url": "/v4/videos/generations", "body": body}


def image(cid: str, prompt: str = "a paper boat") -> dict[str, Any]:
    body = {"model": "glm-image", "prompt": prompt}
    return {"custom_id": cid, "url": "/v4/async/images/generations", "body": body}


def chat(cid: str, *, kind: str = "chat/completions") -> dict[str, Any]:
    body = {"model": "glm-4.5-air", "messages": [{"role": "user", "content": f"hi {cid}"}]}
    return {"custom_id": cid, "url": f"/v4/{kind}", "body": body}


def rows_of(out: Path) -> dict[str, dict[str, Any]]:
    store = Store(checkpoint_path(out), create=False)
    try:
        return {r["custom_id"]: r for chunk in store.iter_rows() for r in chunk}
    finally:
        store.close()


def check_artifacts(out: Path, row: dict[str, Any], kinds: list[str]) -> None:
    """Every record's file is on disk inside OUT/artifacts, matches its hash, has a sidecar."""
    records = orjson.loads(row["artifacts"])
    assert [r["kind"] for r in records] == kinds
    root = (out / ARTIFACTS_DIR).resolve()
    for rec in records:
        path = (out / rec["path"]).resolve()
        assert path.parent == root, rec["path"]
        data = path.read_bytes()
        assert len(data) == rec["bytes"] > 0
        assert hashlib.sha256(data).hexdigest() == rec["sha256"]
        side = orjson.loads(path.with_name(path.name + ".json").read_bytes())
        assert side["ai_generated"] is True
        assert side["sha256"] == rec["sha256"] and side["bytes"] == rec["bytes"]
        assert side["task_id"] == row["task_id"] and side["request_id"] == row["request_id"]
        assert side["custom_id"] == row["custom_id"] and side["model"] == row["model"]
        assert "?" not in side["source_url"] and side["created_at"]


def assert_submitted_once(stats: dict[str, Any], rows: dict[str, dict[str, Any]]) -> None:
    by_rid = stats["submissions_by_request_id"]
    for cid, row in rows.items():
        if row["endpoint"] in ("videos/generations", "async/images/generations"):
            assert by_rid.get(row["request_id"], 0) == 1, (cid, row["request_id"])
    assert not stats["duplicates"]["request_id"]


# -- (a) a mixed job ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_mixed_job_downloads_every_artifact(tmp_path: Path) -> None:
    spec_rows = (
        [chat(f"chat-{i}") for i in range(6)]
        + [video(f"vid-{i}") for i in range(4)]
        + [image(f"img-{i}") for i in range(3)]
        + [chat(f"achat-{i}", kind="async/chat/completions") for i in range(3)]
    )
    spec = write_spec(tmp_path / "spec.jsonl", spec_rows)
    async with Simulator(SimConfig(task_seconds=0.2)) as sim:
        result = await run_job(
            settings_for(tmp_path / "out", spec, sim.base_url), handle_signals=False
        )
        stats = sim.stats()
    assert result.exit_code == 0, result.message
    assert result.summary["succeeded"] == 16 and result.summary["in_progress"] == 0
    assert result.counters.polling == 0
    assert stats["tasks"]["submitted"] == 10 and stats["tasks"]["succeeded"] == 10
    assert stats["downloads"] == 4 * 2 + 3
    out = tmp_path / "out"
    rows = rows_of(out)
    assert_submitted_once(stats, rows)
    job_id = result.summary["settings"]["job_id"]
    for i in range(4):
        row = rows[f"vid-{i}"]
        assert row["request_id"] == f"{job_id}-vid-{i}" and row["task_status"] == "SUCCESS"
        assert row["videos"] == 1 and row["cost_nano"] == 200_000_000  # 0.2 USD per video
        assert orjson.loads(row["response"])["task_status"] == "SUCCESS"
        check_artifacts(out, row, ["video", "cover"])
    for i in range(3):
        row = rows[f"img-{i}"]
        assert row["images"] == 1 and row["cost_nano"] == 15_000_000  # 0.015 USD per image
        check_artifacts(out, row, ["image"])
        achat = rows[f"achat-{i}"]
        assert achat["task_id"] and achat["artifacts"] is None
        assert achat["completion_tokens"] > 0 and achat["cost_nano"] > 0
        assert orjson.loads(achat["response"])["choices"][0]["message"]["content"]
    assert all(rows[f"chat-{i}"]["task_id"] is None for i in range(6))
    # Cost in the summary is the sum of rows, media included.
    assert result.summary["cost_nano"] == sum(r["cost_nano"] or 0 for r in rows.values())
    table = pq.read_table(out / "results.parquet")
    assert table.num_rows == 16 and "artifacts" in table.column_names
    assert not list((out / ARTIFACTS_DIR).glob(".*"))  # no temp files left


@pytest.mark.anyio
async def test_no_download_records_urls_and_keeps_the_rows_request_id(tmp_path: Path) -> None:
    own = video("v-own")
    own["body"]["request_id"] = "my-own-request-id"
    spec = write_spec(tmp_path / "spec.jsonl", [own, image("i-0")])
    async with Simulator(SimConfig(task_seconds=0.05)) as sim:
        settings = settings_for(tmp_path / "out", spec, sim.base_url, download=False)
        result = await run_job(settings, handle_signals=False)
        stats = sim.stats()
    assert result.exit_code == 0, result.message
    assert stats["downloads"] == 0 and not (tmp_path / "out" / ARTIFACTS_DIR).exists()
    rows = rows_of(tmp_path / "out")
    assert rows["v-own"]["request_id"] == "my-own-request-id"
    assert stats["submissions_by_request_id"]["my-own-request-id"] == 1
    records = orjson.loads(rows["v-own"]["artifacts"])
    assert [r["kind"] for r in records] == ["video", "cover"]
    assert all(r["url"].startswith("http") and r["path"] is None for r in records)


@pytest.mark.anyio
async def test_oversized_artifact_fails_its_row_and_leaves_no_file(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.jsonl", [image("i-0"), chat("c-0")])
    async with Simulator(SimConfig(task_seconds=0.05)) as sim:
        settings = settings_for(tmp_path / "out", spec, sim.base_url, max_artifact_bytes=100)
        result = await run_job(settings, handle_signals=False)
    assert result.exit_code == 1
    rows = rows_of(tmp_path / "out")
    assert rows["i-0"]["error_code"] == "artifact_too_large"
    assert rows["i-0"]["cost_nano"] == 15_000_000  # the task ran and is billed
    assert rows["c-0"]["status"] == "succeeded"
    assert not list((tmp_path / "out" / ARTIFACTS_DIR).iterdir())


# -- (c) failed and overdue tasks fail only their rows --------------------------------------


@pytest.mark.anyio
async def test_failed_tasks_fail_only_their_rows(tmp_path: Path) -> None:
    rows = [video("v-ok-1"), video("v-bad", f"boom {FAIL}"), video("v-ok-2")]
    rows += [image("i-bad", f"x {FAIL}"), image("i-ok"), chat("c-1")]
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    async with Simulator(SimConfig(task_seconds=0.1)) as sim:
        result = await run_job(
            settings_for(tmp_path / "out", spec, sim.base_url), handle_signals=False
        )
        stats = sim.stats()
    assert result.exit_code == 1
    got = rows_of(tmp_path / "out")
    for cid in ("v-bad", "i-bad"):
        row = got[cid]
        assert row["status"] == "failed" and row["error_code"] == "task_failed"
        assert row["task_status"] == "FAIL" and row["task_id"] in row["error_message"]
        assert row["artifacts"] is None and not row["cost_nano"]
    for cid in ("v-ok-1", "v-ok-2", "i-ok", "c-1"):
        assert got[cid]["status"] == "succeeded", got[cid]["error_message"]
    assert stats["tasks"]["failed"] == 2 and stats["tasks"]["submitted"] == 5
    assert_submitted_once(stats, got)


@pytest.mark.anyio
async def test_overdue_tasks_time_out_then_resume_polls_them(tmp_path: Path) -> None:
    rows = [video(f"v-{i}") for i in range(3)] + [chat("c-0"), chat("c-1")]
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    async with Simulator(SimConfig(task_seconds=1.2)) as sim:
        settings = settings_for(tmp_path / "out", spec, sim.base_url, task_max_age=0.3)
        first = await run_job(settings, handle_signals=False)
        assert first.exit_code == 1
        assert "resume" in first.message
        got = rows_of(tmp_path / "out")
        for i in range(3):
            row = got[f"v-{i}"]
            assert row["error_code"] == "task_timeout", row
            assert "still PROCESSING" in row["error_message"]
            assert "resume to keep polling" in row["error_message"]
            assert row["task_id"] in row["error_message"]
        assert got["c-0"]["status"] == got["c-1"]["status"] == "succeeded"
        await anyio.sleep(1.2)  # the tasks finish on the platform meanwhile
        second = await run_job(settings, handle_signals=False)
        stats = sim.stats()
    assert second.exit_code == 0, second.message
    got = rows_of(tmp_path / "out")
    assert all(r["status"] == "succeeded" for r in got.values())
    for i in range(3):
        check_artifacts(tmp_path / "out", got[f"v-{i}"], ["video", "cover"])
    assert stats["tasks"]["submitted"] == 3  # polled again, never resubmitted
    assert_submitted_once(stats, got)


# -- stops, resumes and the submit window ------------------------------------------------


@pytest.mark.anyio
async def test_stop_leaves_submitted_tasks_for_the_resume(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.jsonl", [video(f"v-{i}") for i in range(6)])
    async with Simulator(SimConfig(task_seconds=0.5, balance_requests=3)) as sim:
        settings = settings_for(tmp_path / "out", spec, sim.base_url, concurrency=1)
        first = await run_job(settings, handle_signals=False)
        assert first.exit_code == 3 and "1113" in first.message
        assert first.summary["in_progress"] == 3 and first.summary["succeeded"] == 0
        assert sim.stats()["tasks"]["polls"] == 0  # stopped before the first poll
        sim.update(balance_requests=None)
        second = await run_job(settings, handle_signals=False)
        stats = sim.stats()
    assert second.exit_code == 0, second.message
    assert stats["tasks"]["submitted"] == 6
    assert_submitted_once(stats, rows_of(tmp_path / "out"))


@pytest.mark.anyio
async def test_resume_repolls_submitted_and_fails_submitting_rows(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.jsonl", [video(f"v-{i}") for i in range(3)])
    out = tmp_path / "out"
    async with Simulator(SimConfig(task_seconds=0.1)) as sim:
        settings = settings_for(tmp_path / "out", spec, sim.base_url)
        assert (await run_job(settings, handle_signals=False)).exit_code == 0
        # Pretend the last run died: v-0 inside the submit window, v-1 while polling.
        before = rows_of(out)
        for rec in orjson.loads(before["v-1"]["artifacts"]):
            (out / rec["path"]).unlink()
        db = sqlite3.connect(checkpoint_path(out))
        with db:
            db.execute(
                "UPDATE rows SET status='submitting', task_id=NULL, task_status=NULL, "
                "artifacts=NULL, response=NULL WHERE custom_id='v-0'"
            )
            db.execute(
                "UPDATE rows SET status='submitted', artifacts=NULL, response=NULL "
                "WHERE custom_id='v-1'"
            )
        db.close()
        again = await run_job(settings, handle_signals=False)
        stats = sim.stats()
    assert again.exit_code == 1
    rows = rows_of(out)
    unknown = rows["v-0"]
    assert unknown["status"] == "failed" and unknown["error_code"] == "submit_unknown"
    assert unknown["request_id"] in unknown["error_message"]
    assert rows["v-1"]["status"] == "succeeded"
    check_artifacts(out, rows["v-1"], ["video", "cover"])
    assert rows["v-2"] == before["v-2"]
    assert stats["tasks"]["submitted"] == 3
    assert_submitted_once(stats, rows)


@pytest.mark.anyio
async def test_dropped_submit_is_not_resubmitted_but_429_is_retried(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.jsonl", [video(f"v-{i}") for i in range(3)])
    async with Simulator(SimConfig(rate_drop=1.0)) as sim:
        result = await run_job(
            settings_for(tmp_path / "out", spec, sim.base_url), handle_signals=False
        )
        stats = sim.stats()
    assert result.exit_code == 1
    assert stats["requests"]["videos/generations"] == 3  # one try each: the outcome is unknown
    for row in rows_of(tmp_path / "out").values():
        assert row["error_code"] == "submit_unknown"
        assert "connection lost" in row["error_message"]
        assert row["request_id"] in row["error_message"]

    spec = write_spec(tmp_path / "spec2.jsonl", [video(f"w-{i}") for i in range(6)])
    async with Simulator(SimConfig(task_seconds=0.1, rate_429=0.4, rate_500=0.1, seed=3)) as sim:
        settings = settings_for(tmp_path / "out2", spec, sim.base_url)
        result = await run_job(settings, handle_signals=False)
        stats = sim.stats()
    assert result.exit_code == 0, result.message
    assert stats["faults"]["429"] + stats["faults"]["500"] > 0
    assert stats["tasks"]["submitted"] == 6
    assert_submitted_once(stats, rows_of(tmp_path / "out2"))


# -- (d) hostile custom_ids ----------------------------------------------------------------


HOSTILE = ["../../etc/x", "/abs/path", "..", ".", ".hidden", "a/b", "a_b", "视频/../1", "x" * 250]


@pytest.mark.anyio
async def test_hostile_custom_ids_land_inside_artifacts(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.jsonl", [image(cid) for cid in HOSTILE])
    async with Simulator(SimConfig(task_seconds=0.05)) as sim:
        result = await run_job(
            settings_for(tmp_path / "out", spec, sim.base_url), handle_signals=False
        )
    assert result.exit_code == 0, result.message
    out = tmp_path / "out"
    rows = rows_of(out)
    paths = set()
    for cid in HOSTILE:
        check_artifacts(out, rows[cid], ["image"])
        (rec,) = orjson.loads(rows[cid]["artifacts"])
        assert rec["path"].startswith(f"{ARTIFACTS_DIR}/") and ".." not in rec["path"]
        paths.add(rec["path"])
    assert len(paths) == len(HOSTILE)  # distinct ids stay distinct
    top = {p.name for p in tmp_path.iterdir()}
    assert top == {"spec.jsonl", "out"}
    files = {p.relative_to(out).parts[0] for p in out.rglob("*") if p.is_file()}
    assert files <= {ARTIFACTS_DIR, "checkpoint.sqlite", "checkpoint.sqlite-wal",
                     "checkpoint.sqlite-shm", "checkpoint.lock", "results.parquet",
                     "spec.marks", "spec.identity"}  # fmt: skip
    assert not [p for p in (out / ARTIFACTS_DIR).rglob("*") if p.is_dir()]


@given(st.text(min_size=1, max_size=300))
@hsettings(max_examples=300, deadline=None)
def test_artifact_names_are_one_safe_component(custom_id: str) -> None:
    stem = safe_stem(custom_id)
    name = artifact_name(custom_id, Item("video", 0, "http://h/x/0.mp4?sig=1"))
    assert "/" not in name and "\\" not in name and "\0" not in name
    assert not name.startswith(".") and name not in ("", ".", "..")
    assert len(name.encode()) < 160 and name.startswith(stem)
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
    other = custom_id + "x"
    assert safe_stem(other) != stem


# -- (e) expired URLs are refreshed by polling ---------------------------------------------


@pytest.mark.anyio
async def test_expired_url_is_refreshed_by_polling_not_resubmitting(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.jsonl", [video("v-0"), image("i-0")])
    async with Simulator(SimConfig(task_seconds=0.1, url_ttl=0.0)) as sim:

        async def heal() -> None:
            while sim.stats()["faults"]["expired"] == 0:
                await anyio.sleep(0.005)
            sim.update(url_ttl=None)

        async with anyio.create_task_group() as tg:
            tg.start_soon(heal)
            settings = settings_for(tmp_path / "out", spec, sim.base_url, poll_initial=0.1)
            result = await run_job(settings, handle_signals=False)
        stats = sim.stats()
    assert result.exit_code == 0, result.message
    assert stats["faults"]["expired"] >= 1
    assert stats["tasks"]["submitted"] == 2
    assert stats["tasks"]["polls"] >= 3  # at least one poll more than the two tasks needed
    rows = rows_of(tmp_path / "out")
    assert_submitted_once(stats, rows)
    check_artifacts(tmp_path / "out", rows["v-0"], ["video", "cover"])
    check_artifacts(tmp_path / "out", rows["i-0"], ["image"])


# -- (b) SIGKILL at random moments ---------------------------------------------------------


def _statuses(db_path: Path) -> dict[str, int]:
    """Row counts by status, read from the runner's live checkpoint (empty if none yet)."""
    if not db_path.exists():
        return {}
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1.0)
        try:
            return dict(db.execute("SELECT status, COUNT(*) FROM rows GROUP BY status"))
        finally:
            db.close()
    except sqlite3.Error:
        return {}


def _moved(before: dict[str, int], now: dict[str, int], key: str | None) -> bool:
    """Whether the checkpoint changed (key None) or gained rows of status `key`."""
    if key is None:
        return now != before
    return now.get(key, 0) > before.get(key, 0)


def test_sigkill_at_random_moments_never_submits_twice(tmp_path: Path) -> None:
    n = 36
    rows = [video(f"v-{i}", f"clip {i}" + (f" {FAIL}" if i % 9 == 4 else "")) for i in range(n)]
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    out = tmp_path / "out"
    db_path = checkpoint_path(out)
    sim = subprocess.Popen(
        [sys.executable, "-m", "runner.sim", "--port", "0", "--task-seconds", "1",
         "--latency", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert sim.stdout is not None
        base = sim.stdout.readline().strip()
        assert base.startswith("http://"), base
        env = {**os.environ, "ZAI_API_KEY": "crash-test-key"}
        cmd = [sys.executable, "-m", "runner", "run", str(spec), "--out", str(out),
               "--base-url", base, "--provider", "zai", "--no-progress",
               "--concurrency", "2"]  # fmt: skip
        rng = random.Random(20260731)
        kills: list[dict[str, int]] = []
        started = time.monotonic()
        while True:
            assert time.monotonic() - started < 50, f"no end after kills {kills}"
            log = tmp_path / f"run-{len(kills)}.log"
            with log.open("wb") as sink:
                proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=sink)
            if len(kills) < 10:
                # Kill a random moment after this run changed the checkpoint: the first
                # seven once any row changed (mostly inside or between submits), the last
                # three once a row succeeded (while polling and downloading the others).
                before = _statuses(db_path)
                key = "succeeded" if len(kills) >= 7 else None
                while proc.poll() is None and not _moved(before, _statuses(db_path), key):
                    time.sleep(0.005)
                time.sleep(rng.uniform(0.0, 0.3 if key is None else 0.1))
                if proc.poll() is None:
                    seen = _statuses(db_path)
                    proc.kill()
                    proc.wait()
                    kills.append(seen)
                    continue
            rc = proc.wait(timeout=40)
            if rc in (0, 1):
                break
            assert rc == 3, log.read_text()
        stats = httpx.get(base.split("/api/")[0] + "/_sim/stats").json()
    finally:
        sim.terminate()
        sim.wait(timeout=10)

    assert len(kills) >= 5, kills
    assert any(k.get("submitting") for k in kills), kills  # inside the submit window
    assert any(k.get("submitted") for k in kills), kills  # while tasks were being polled
    got = rows_of(out)
    assert len(got) == n and all(r["status"] in ("succeeded", "failed") for r in got.values())
    by_rid = stats["submissions_by_request_id"]
    assert not stats["duplicates"]["request_id"]
    unknown = [r for r in got.values() if r["error_code"] == "submit_unknown"]
    for row in got.values():
        count = by_rid.get(row["request_id"], 0)
        if row["error_code"] == "submit_unknown":
            assert count <= 1, row
        else:
            assert count == 1, row
    assert stats["tasks"]["submitted"] == sum(by_rid.values())
    assert n - len(unknown) <= stats["tasks"]["submitted"] <= n
    for row in got.values():
        if row["status"] == "succeeded":
            check_artifacts(out, row, ["video", "cover"])
        elif row["error_code"] != "submit_unknown":
            assert row["error_code"] == "task_failed", row
            assert FAIL in spec.read_text().splitlines()[int(row["seq"])]
    assert not list((out / ARTIFACTS_DIR).glob(".*"))  # no half-written files remain
    assert pq.read_table(out / "results.parquet").num_rows == n
