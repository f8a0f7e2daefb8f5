"""The platform's whole surface from local files, in one job killed three times.

300 images (png, jpeg, webp) in vision chat rows, 30 PDFs for layout parsing, 30 WAV clips
for speech to text, 30 translation agent rows and 30 effects-video agent rows, plus rows
naming files outside the files root. `runner run` is a real process against the simulator
process, SIGKILLed three times while rows are on the wire, then resumed to the end. What a
user could read afterwards (the checkpoint, results.parquet) is held against what the
platform's ledger saw.
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

import orjson
import pyarrow.parquet as pq
import pytest
from media import jpeg, pdf, png, wav, webp
from simproc import SimProcess

from jobs import write_spec
from runner.job import checkpoint_path

pytestmark = pytest.mark.slow

KEY = "files-job-key-3b9d.NOT-FOR-LOGS"
CONCURRENCY = 4
# The models answered in the HTTP response (the rest create tasks).
SYNC_MODELS = ("glm-4.5v", "glm-ocr", "glm-asr-2512", "general_translation")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def vision(cid: str, refs: list[str]) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": r}} for r in refs]
    parts.append({"type": "text", "text": f"Compare the pictures of {cid}"})
    body = {"model": "glm-4.5v", "messages": [{"role": "user", "content": parts}]}
    return {"custom_id": cid, "url": "/v4/chat/completions", "body": body}


def agent_text(words: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": words}]}]


def build_job(root: Path) -> tuple[Path, dict[str, str], dict[str, str]]:
    """The spec and its files; returns the spec, every sent file's sha256 by path, and the
    rows that must fail as invalid (custom_id -> what their message says)."""
    for folder in ("img", "docs", "clips"):
        (root / folder).mkdir(parents=True)
    files: dict[str, str] = {}

    def put(name: str, data: bytes) -> str:
        (root / name).write_bytes(data)
        files[name] = sha(data)
        return name

    rows: list[dict[str, Any]] = []
    for i in range(100):  # three images a row, one of each type
        refs = [
            put(f"img/{i:03d}.png", png(i)),
            put(f"img/{i:03d}.jpg", jpeg(i)),
            put(f"img/{i:03d}.webp", webp(i)),
        ]
        rows.append(vision(f"img{i}", [refs[0], "file:" + refs[1], refs[2]]))
    for i in range(30):
        name = put(f"docs/{i:02d}.pdf", pdf(i))
        rows.append(
            {
                "custom_id": f"pdf{i}",
                "url": "/v4/layout_parsing",
                "body": {"model": "glm-ocr", "file": name},
            }
        )
    for i in range(30):
        name = put(f"clips/{i:02d}.wav", wav(i, seconds=0.2 + i / 100))
        body = {"model": "glm-asr-2512", "file": name, "hotwords": ["amber"]}
        rows.append({"custom_id": f"asr{i}", "url": "/v4/audio/transcriptions", "body": body})
    for i in range(30):
        body = {
            "agent_id": "general_translation",
            "messages": agent_text(f"line {i} to translate"),
            "custom_variables": {"source_lang": "en", "target_lang": "fr"},
        }
        rows.append({"custom_id": f"tr{i}", "url": "/v1/agents", "body": body})
    for i in range(30):
        content = [
            {"type": "image_url", "image_url": f"https://example.com/face{i}.png"},
            {"type": "text", "text": f"clip {i}"},
        ]
        body = {
            "agent_id": "vidu_template_agent",
            "messages": [{"role": "user", "content": content}],
            "custom_variables": {"template": "bodyshake"},
        }
        rows.append({"custom_id": f"vidu{i}", "url": "/v1/agents", "body": body})
    # Files outside the root, each in the kind of row that would upload it.
    outside = root.parent / "x.png"
    outside.write_bytes(png(999))
    os.symlink(outside, root / "img" / "leak.png")
    (root.parent / "x.wav").write_bytes(wav(999))
    invalid = {
        "climb": "the path climbs out of it",
        "abs": "an absolute path elsewhere",
        "link": "a symlink leads out of it",
        "climb-audio": "the path climbs out of it",
    }
    rows.append(vision("climb", ["../x.png"]))
    rows.append(vision("abs", ["/etc/hostname"]))
    rows.append(vision("link", ["img/leak.png"]))
    rows.append(
        {
            "custom_id": "climb-audio",
            "url": "/v4/audio/transcriptions",
            "body": {"model": "glm-asr-2512", "file": "../x.wav"},
        }
    )
    random.Random(7).shuffle(rows)  # the kinds interleaved, as a real spec may have them
    return write_spec(root / "spec.jsonl", rows), files, invalid


def committed(db_path: Path) -> dict[str, dict[str, Any]]:
    """The rows the live checkpoint holds, by custom_id (empty before it exists)."""
    if not db_path.exists():
        return {}
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1.0)
        db.row_factory = sqlite3.Row
        try:
            return {r["custom_id"]: dict(r) for r in db.execute("SELECT * FROM rows")}
        finally:
            db.close()
    except sqlite3.Error:
        return {}


def sync_billed(stats: dict[str, Any]) -> int:
    by_model = stats["billed"]["by_model"]
    return sum(by_model.get(m, {}).get("requests", 0) for m in SYNC_MODELS)


def drained(sim: SimProcess) -> dict[str, Any]:
    """The ledger once the requests a killed run left on the wire have been answered."""
    deadline = time.monotonic() + 10
    stats = sim.stats()
    while stats["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)
        stats = sim.stats()
    return stats


def sync_done(rows: dict[str, dict[str, Any]]) -> int:
    return sum(r["model"] in SYNC_MODELS and r["status"] == "succeeded" for r in rows.values())


def test_a_job_over_every_kind_of_file_survives_three_kills(tmp_path: Path) -> None:
    root = tmp_path / "spec"
    spec, files, invalid = build_job(root)
    out = tmp_path / "out"
    env = {**os.environ, "ZAI_API_KEY": KEY}
    sim = SimProcess("--latency", "0.1", "--task-seconds", "1")
    cmd = [sys.executable, "-m", "runner", "run", str(spec), "--out", str(out),
           "--base-url", sim.base_url, "--provider", "zai", "--no-progress",
           "--concurrency", str(CONCURRENCY)]  # fmt: skip
    rng = random.Random(20261203)
    db_path = checkpoint_path(out)
    # Per run: the sync answers the platform gave (once every request the run left on the
    # wire was answered) and the sync rows the checkpoint gained.
    runs: list[tuple[int, int]] = []
    billed = done = 0
    started = time.monotonic()
    try:
        while True:
            assert time.monotonic() - started < 120, f"no end after runs {runs}"
            log = tmp_path / f"run-{len(runs)}.log"
            with log.open("wb") as sink:
                proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=sink)
            killed = False
            if len(runs) < 3:
                # Kill mid-job: a moment after this run's first sync answers were committed,
                # so rows of every kind are on the wire.
                while proc.poll() is None and sync_done(committed(db_path)) == done:
                    time.sleep(0.005)
                time.sleep(rng.uniform(0.0, 0.3))
                if proc.poll() is None:
                    proc.kill()
                    killed = True
            rc = proc.wait(timeout=90)
            assert killed or rc in (0, 1), log.read_text()
            stats = drained(sim)
            rows = committed(db_path)
            runs.append((sync_billed(stats) - billed, sync_done(rows) - done))
            billed, done = sync_billed(stats), sync_done(rows)
            if not killed:
                break
    finally:
        sim.stop()
    assert len(runs) == 4, f"the job ended before three kills landed: {runs}"

    rows = committed(db_path)
    spec_ids = [orjson.loads(line)["custom_id"] for line in spec.read_bytes().splitlines()]
    # Every row answered once: one terminal outcome per spec row, nothing extra.
    assert sorted(rows) == sorted(spec_ids)
    for cid, why in invalid.items():
        row = rows[cid]
        assert (row["status"], row["error_code"], row["attempts"]) == ("failed", "invalid_row", 0)
        assert "outside the files root" in row["error_message"] and why in row["error_message"]
    failed = {c: (r["error_code"], r["error_message"]) for c, r in rows.items() if c not in invalid}
    failed = {c: e for c, e in failed.items() if rows[c]["status"] != "succeeded"}
    # An effects video whose submission was cut by a kill may be recorded as unknown, never
    # sent twice; every other row succeeded.
    assert all(code == "submit_unknown" for code, _ in failed.values()), failed

    # Every file arrived, byte for byte, and nothing from outside the root did.
    assert set(stats["files"]) == set(files.values())
    outside = {sha(png(999)), sha(wav(999))}
    assert not outside & set(stats["files"])
    assert stats["requests"]["audio/transcriptions"] >= 30
    assert stats["requests"]["layout_parsing"] >= 30

    # No effects-video task created twice.
    created = stats["agents"]["tasks"]
    assert len(created) >= 30 - len(failed) and all(n == 1 for n in created.values()), created
    for i in range(30):
        row = rows[f"vidu{i}"]
        if row["error_code"] != "submit_unknown":
            assert created.get(row["request_id"]) == 1, row
            (record,) = orjson.loads(row["artifacts"])
            assert sha((out / record["path"]).read_bytes()) == record["sha256"]

    # No sync row answered twice beyond what a kill cut off: a run's answers the checkpoint
    # did not gain were on the wire or awaiting their commit when it died (at most a few
    # waves of the lanes' slots), and the run that ends the job has none.
    assert sync_done(rows) == 100 + 30 + 30 + 30
    lost = [answered - gained for answered, gained in runs]
    assert lost[-1] == 0, runs
    assert sum(lost[:-1]) > 0, runs  # the kills cut rows off mid-flight
    assert all(0 <= n <= 4 * CONCURRENCY * len(SYNC_MODELS) for n in lost), runs
    assert sync_billed(stats) - sync_done(rows) == sum(lost)

    table = pq.read_table(out / "results.parquet", columns=["custom_id", "status"])
    assert table.num_rows == len(spec_ids)
    for log in tmp_path.glob("run-*.log"):
        assert "NOT-FOR-LOGS" not in log.read_text()
