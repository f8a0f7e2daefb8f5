"""Local files in rows: resolved under one root, read at send time, arrived intact."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from media import PDF, png

from jobs import settings_for, write_spec
from runner import run_job
from runner.job import checkpoint_path
from runner.sim import SimConfig, Simulator
from runner.store import Store

pytestmark = pytest.mark.anyio


def image_row(cid: str, url: str, part: str = "image_url") -> dict[str, Any]:
    content = [{"type": part, part: {"url": url}}, {"type": "text", "text": "Describe it"}]
    body = {"model": "glm-4.5v", "messages": [{"role": "user", "content": content}]}
    return {"custom_id": cid, "url": "/v4/chat/completions", "body": body}


async def test_local_images_arrive_intact(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    digests = {}
    rows = []
    for i in range(12):
        data = png(i)
        name = f"img/{i:04d}.png"
        (tmp_path / name).write_bytes(data)
        digests[f"p{i}"] = hashlib.sha256(data).hexdigest()
        rows.append(image_row(f"p{i}", name if i % 2 else f"file:{name}"))
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    async with Simulator(SimConfig()) as sim:
        result = await run_job(
            settings_for(tmp_path / "out", spec, sim.base_url), handle_signals=False
        )
        stats = sim.stats()
    assert result.exit_code == 0, result.message
    assert sorted(stats["files"]) == sorted(digests.values())
    table = pq.read_table(tmp_path / "out" / "results.parquet")
    assert table.num_rows == 12
    # The spec's paths, never the bytes, are what the run keeps.
    assert not any(b"base64" in (r or "").encode() for r in table.column("response").to_pylist())


async def test_references_out_of_the_root_are_invalid_and_never_sent(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "img").mkdir(parents=True)
    (root / "img" / "ok.png").write_bytes(png(1))
    (tmp_path / "x.png").write_bytes(png(2))
    os.symlink(tmp_path / "x.png", root / "img" / "link.png")
    rows = [
        image_row("ok", "img/ok.png"),
        image_row("up", "../x.png"),
        image_row("abs", "/etc/hostname"),
        image_row("link", "img/link.png"),
        image_row("missing", "img/none.png"),
        image_row("video", "clips/a.mp4", part="video_url"),
    ]
    spec = write_spec(root / "spec.jsonl", rows)
    async with Simulator(SimConfig()) as sim:
        result = await run_job(
            settings_for(tmp_path / "out", spec, sim.base_url), handle_signals=False
        )
        stats = sim.stats()
    assert result.exit_code == 1
    assert stats["files"] == [hashlib.sha256(png(1)).hexdigest()]
    assert stats["billed"]["requests"] == 1
    store = Store(checkpoint_path(tmp_path / "out"))
    try:
        for cid, why in [
            ("up", "outside the files root"),
            ("abs", "outside the files root"),
            ("link", "outside the files root"),
            ("missing", "no such file"),
            ("video", "video_url takes a public URL only"),
        ]:
            row = store.get(cid)
            assert row is not None, cid
            field = "video_url.url" if cid == "video" else "image_url.url"
            assert row["error_code"] == "invalid_row", cid
            assert why in row["error_message"] and field in row["error_message"], cid
    finally:
        store.close()


async def test_documents_and_video_images_arrive_intact_and_caps_hold(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.pdf").write_bytes(PDF)
    (tmp_path / "docs" / "scan.png").write_bytes(png(5))
    (tmp_path / "frame.png").write_bytes(png(6))
    # Over the OCR image cap of 10 MB: a PNG header, then padding.
    (tmp_path / "docs" / "huge.png").write_bytes(png(7) + bytes(10 * 1024 * 1024))
    (tmp_path / "notes.txt").write_bytes(b"plain text, not a document")
    rows: list[dict[str, Any]] = [
        {
            "custom_id": "d1",
            "url": "/v4/layout_parsing",
            "body": {"model": "glm-ocr", "file": "docs/a.pdf"},
        },
        {
            "custom_id": "d2",
            "url": "/v4/layout_parsing",
            "body": {"model": "glm-ocr", "file": "docs/scan.png"},
        },
        {
            "custom_id": "big",
            "url": "/v4/layout_parsing",
            "body": {"model": "glm-ocr", "file": "docs/huge.png"},
        },
        {
            "custom_id": "txt",
            "url": "/v4/layout_parsing",
            "body": {"model": "glm-ocr", "file": "notes.txt"},
        },
        {
            "custom_id": "v1",
            "url": "/v4/videos/generations",
            "body": {"model": "cogvideox-3", "prompt": "waves", "image_url": ["frame.png"]},
        },
    ]
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    async with Simulator(SimConfig()) as sim:
        result = await run_job(
            settings_for(tmp_path / "out", spec, sim.base_url), handle_signals=False
        )
        stats = sim.stats()
    assert result.exit_code == 1
    assert stats["requests"].get("layout_parsing") == 2
    store = Store(checkpoint_path(tmp_path / "out"))
    try:
        big, txt = store.get("big"), store.get("txt")
        assert big is not None and txt is not None
        assert big["error_code"] == "file_too_large" and "10 MB" in big["error_message"]
        assert txt["error_code"] == "invalid_row" and "body.file" in txt["error_message"]
        for cid in ("d1", "d2", "v1"):
            row = store.get(cid)
            assert row is not None and row["status"] == "succeeded", cid
    finally:
        store.close()
    sent = {hashlib.sha256(b).hexdigest() for b in (PDF, png(5), png(6))}
    assert sorted(stats["files"]) == sorted(sent)


async def test_simulator_refuses_bad_base64_and_over_cap_files() -> None:
    import base64

    import httpx

    auth = {"Authorization": "Bearer 4f1d2c3b5a6e.sim-secret-part"}
    over = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(10 * 1024 * 1024 + 1)).decode()
    async with Simulator(SimConfig()) as sim, httpx.AsyncClient(base_url=sim.base_url) as client:
        for file in ("data:image/png;base64,@@not-base64@@", over):
            resp = await client.post(
                "/layout_parsing", json={"model": "glm-ocr", "file": file}, headers=auth
            )
            assert resp.status_code == 400
            assert resp.json()["error"]["code"] == "1214"
        assert sim.stats()["files"] == []


def test_validate_lists_references_out_of_the_root(tmp_path: Path) -> None:
    from runner.spec import SpecDefaults
    from runner.spec.validate import validate_spec

    (tmp_path / "ok.png").write_bytes(png(1))
    rows = [
        image_row("ok", "ok.png"),
        image_row("up", "../x.png"),
        image_row("abs", "/etc/hostname"),
    ]
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    report = validate_spec(spec, SpecDefaults(files_root=tmp_path))
    assert [(e.line, "outside the files root" in e.message) for e in report.errors] == [
        (2, True),
        (3, True),
    ]
