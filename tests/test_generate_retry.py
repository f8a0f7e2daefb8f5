"""`generate(retry=...)` and `runner generate --retry`: chosen rows of an existing out asked
again against the simulator over real HTTP; the other rows keep their answers, and every
attempt stays in the `cost` and `attempts` columns."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import reliability_harness as h
from simproc import SimProcess

import runner

ROOT = Path(__file__).resolve().parents[1]
REFUSED = {2, 5, 7}  # their topic carries [[sim:1301]]: refused until the server is mended


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZAI_API_KEY", h.KEY)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def _rows() -> list[dict[str, Any]]:
    return [
        {"id": i, "topic": f"topic {i}" + (" [[sim:1301]]" if i in REFUSED else "")}
        for i in range(10)
    ]


def _billed(sim: SimProcess) -> int:
    return int(sim.stats()["billed"]["requests"])


def _gen(sim: SimProcess, out: Path, **kw: Any) -> pa.Table:
    kw.setdefault("prompt", "Name a book about {topic}.")
    return runner.generate(
        _rows(), model="glm-4.5-air", out=out, provider="zai", base_url=sim.base_url,
        progress=False, **kw,
    )  # fmt: skip


def test_retry_asks_only_the_chosen_rows_again(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with SimProcess() as sim:
        first = _gen(sim, out)
        status = first.column("status").to_pylist()
        assert {i for i, s in enumerate(status) if s == "failed"} == REFUSED
        assert set(first.column("error_code").to_pylist()) == {None, "1301"}
        billed = _billed(sim)

        # A changed prompt with retry: only the chosen rows are sent (with the new prompt);
        # the others keep their answers and send nothing.
        sim.configure(code_markers=False)
        again = _gen(sim, out, prompt="Name one novel about {topic}.", retry=["1301"])
        sent = sim.stats()["requests"]
        assert _billed(sim) == billed + len(REFUSED), sent
        assert set(again.column("status").to_pylist()) == {"succeeded"}
        out_before, out_after = first.column("output"), again.column("output")
        for i in range(10):
            if i not in REFUSED:
                assert out_after[i] == out_before[i]
        attempts = again.column("attempts").to_pylist()
        assert [i for i, a in enumerate(attempts) if a == 2] == sorted(REFUSED)

        # Nothing fails now: a further retry chooses nothing and sends nothing.
        _gen(sim, out, prompt="Name one novel about {topic}.", retry=["1301", "failed"])
        assert _billed(sim) == billed + len(REFUSED)


def test_retry_from_the_command_line(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(
        "".join(f'{{"topic": "t{i}{" [[sim:1301]]" if i == 1 else ""}"}}\n' for i in range(4))
    )
    out = tmp_path / "out"
    with SimProcess() as sim:

        def cli(*extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "runner", "generate", str(src), "--prompt",
                 "About {topic}.", "--out", str(out), "--base-url", sim.base_url,
                 "--no-progress", *extra],
                env=h.runner_env(), capture_output=True, text=True, timeout=120, cwd=ROOT,
            )  # fmt: skip

        r = cli()
        assert r.returncode == 1 and "1 failed" in r.stdout, r.stdout + r.stderr
        billed = _billed(sim)
        r = cli("--retry", "length")  # no answer was cut: nothing chosen, nothing sent
        assert r.returncode == 1 and _billed(sim) == billed, r.stderr
        sim.configure(code_markers=False)
        r = cli("--retry", "1301")
        assert r.returncode == 0 and "0 failed" in r.stdout, r.stdout + r.stderr
        assert _billed(sim) == billed + 1
