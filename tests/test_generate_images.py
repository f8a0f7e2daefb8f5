"""`generate(images=[...])`: image columns of paths or bytes sent to a vision model, against
the simulator over real HTTP; bytes never touch the disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from media import jpeg, png
from simproc import SimProcess

import runner

KEY = "test-key-7f3a9c2e.SECRETPART"


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZAI_API_KEY", KEY)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.chdir(tmp_path)


def test_image_columns_of_paths_and_bytes(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    rows, digests = [], []
    for i in range(10):
        data = png(i) if i % 3 else jpeg(i)
        digests.append(hashlib.sha256(data).hexdigest())
        if i % 2:
            rows.append({"name": f"item {i}", "photo": data, "path": None})  # bytes
        else:
            (tmp_path / "img" / f"{i}.png").write_bytes(data)
            rows.append({"name": f"item {i}", "photo": None, "path": f"img/{i}.png"})
    rows.append({"name": "none", "photo": None, "path": None})  # the prompt alone
    rows.append({"name": "gone", "photo": None, "path": "img/missing.png"})
    rows.append({"name": "outside", "photo": None, "path": "../x.png"})
    out = tmp_path / "out"
    with SimProcess() as sim:
        table = runner.generate(
            rows, prompt="Describe {name}.", images=["photo", "path"], model="glm-4.5v", out=out,
            base_url=sim.base_url, progress=False,
        )  # fmt: skip
        stats = sim.stats()
    status = table.column("status").to_pylist()
    assert status[:11] == ["succeeded"] * 11, table.column("error_message").to_pylist()
    assert status[11:] == ["failed", "failed"]
    assert sorted(stats["files"]) == sorted(digests)  # every image arrived intact, once
    # The bytes given in Python were never written: the job's files hold their sha256.
    for path in out.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            for i in range(1, 10, 2):
                assert (png(i) if i % 3 else jpeg(i)) not in blob, path
    assert b"blob:sha256:" + digests[1].encode() in (out / "requests.jsonl").read_bytes()
    # The table keeps a bytes column's sha256s in its place (output.parquet is on disk).
    assert table.column("photo").to_pylist()[1] == digests[1]
    assert table.column("path").to_pylist()[0] == "img/0.png"

    # Called again with the same input: everything is done, nothing is sent.
    with SimProcess() as sim:
        again = runner.generate(
            rows, prompt="Describe {name}.", images=["photo", "path"], model="glm-4.5v", out=out,
            base_url=sim.base_url, progress=False,
        )  # fmt: skip
        assert sum(sim.stats()["requests"].values()) == 0
    assert again.column("status").to_pylist() == status
