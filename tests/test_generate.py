"""`runner.generate` against the simulator over real HTTP on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from simproc import SimProcess

import runner
from runner.errors import UsageError
from runner.sim import SimConfig, Simulator

KEY = "test-key-7f3a9c2e.SECRETPART"
SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "year": {"type": "integer"}},
    "required": ["title", "year"],
}


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZAI_API_KEY", KEY)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with SimProcess("--latency", "0.01") as running:
        yield running


def requests_sent(sim: SimProcess) -> int:
    return int(sum(sim.stats()["requests"].values()))


def gen(src: Any, sim: SimProcess, out: Path, **kw: Any) -> pa.Table:
    kw.setdefault("prompt", "Name a book about {topic}.")
    kw.setdefault("response_format", SCHEMA)
    return runner.generate(
        src,
        model="glm-4.5-air",
        out=out,
        provider="zai",
        base_url=sim.base_url,
        concurrency=kw.pop("concurrency", 20),
        progress=False,
        **kw,
    )


def topics(n: int, prefix: str = "topic") -> list[dict[str, Any]]:
    return [{"id": i, "topic": f"{prefix} {i}"} for i in range(n)]


def test_ten_rows_come_back_typed_and_in_order(sim: SimProcess, tmp_path: Path) -> None:
    table = gen(topics(10, "thin"), sim, tmp_path / "out")
    assert table.num_rows == 10
    assert table.column_names[:4] == ["id", "topic", "title", "year"]
    assert table.schema.field("year").type == pa.int64()
    assert table.column("id").to_pylist() == list(range(10))
    assert set(table.column("status").to_pylist()) == {"succeeded"}
    assert all(isinstance(t, str) and t for t in table.column("title").to_pylist())
    assert pq.read_table(tmp_path / "out" / "output.parquet").equals(table)


def test_missing_column_is_refused_before_sending(sim: SimProcess, tmp_path: Path) -> None:
    before = requests_sent(sim)
    with pytest.raises(UsageError, match="'subject'"):
        gen(topics(3), sim, tmp_path / "out", prompt="About {subject}")
    assert requests_sent(sim) == before


@pytest.mark.anyio
async def test_agenerate_inside_a_running_loop(tmp_path: Path) -> None:
    async with Simulator(SimConfig(latency=0.0)) as s:
        table = await runner.agenerate(
            topics(5, "async"),
            prompt="Say something about {topic}.",
            model="glm-4.5-air",
            out=tmp_path / "out",
            base_url=s.base_url,
            progress=False,
        )
    assert table.column("output").to_pylist()[0]
    assert table.column("status").to_pylist() == ["succeeded"] * 5
