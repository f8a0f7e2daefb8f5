"""Local files in rows: resolved under one root, read at send time, arrived intact."""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from jobs import settings_for, write_spec
from runner import run_job
from runner.job import checkpoint_path
from runner.sim import SimConfig, Simulator
from runner.store import Store

pytestmark = pytest.mark.anyio


def png(seed: int, size: int = 8) -> bytes:
    """A valid PNG whose pixels depend on `seed`, so every file has its own sha256."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(
        b"\x00" + bytes((seed + x + y) % 256 for x in range(size * 3)) for y in range(size)
    )
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


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
