"""`runner.generate` against the simulator over real HTTP on loopback."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from simproc import SimProcess

import runner
from runner.errors import JobStopped, UsageError
from runner.generation.cache import ResponseCache
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


def test_300_rows_reask_resume_and_cache(sim: SimProcess, tmp_path: Path) -> None:
    """The issue's done-when: typed, in order, one re-ask each, then nothing sent twice."""
    rows = topics(300, "books")
    rows[7]["topic"] += " [[sim:bad-json-once]]"
    rows[13]["topic"] += " [[sim:wrong-type-once]]"
    src = tmp_path / "input.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)

    before = requests_sent(sim)
    table = gen(src, sim, tmp_path / "out", concurrency=50, cache=True)
    assert requests_sent(sim) - before == 302  # 300 rows, one re-ask for each spoilt answer
    assert table.num_rows == 300
    assert table.column("id").to_pylist() == list(range(300))
    assert table.schema.field("title").type == pa.string()
    assert table.schema.field("year").type == pa.int64()
    assert table.column("status").to_pylist() == ["succeeded"] * 300
    attempts = table.column("attempts").to_pylist()
    assert attempts[7] == attempts[13] == 2
    assert sum(attempts) == 302
    assert not any(table.column("cached").to_pylist())
    # Every ask is billed: a re-asked row costs more than one answer.
    cost = table.column("cost").to_pylist()
    assert cost[7] > 0 and cost[13] > 0

    before = requests_sent(sim)
    again = gen(src, sim, tmp_path / "out", concurrency=50, cache=True)
    assert requests_sent(sim) == before  # the checkpoint: nothing is done twice
    assert again.equals(table)

    other = gen(src, sim, tmp_path / "other", concurrency=50, cache=True)
    assert requests_sent(sim) == before  # a new job, the same requests: all from the cache
    assert other.column("cached").to_pylist() == [True] * 300
    assert other.column("cost").to_pylist() == [0.0] * 300
    assert other.column("title").to_pylist() == table.column("title").to_pylist()
    assert other.column("year").to_pylist() == table.column("year").to_pylist()


def test_answers_still_wrong_fail_as_invalid_output_with_raw_text(
    sim: SimProcess, tmp_path: Path
) -> None:
    rows = topics(4, "strict")
    rows[1]["topic"] += " [[sim:wrong-type-once]]"
    rows[2]["topic"] += " [[sim:bad-json-once]]"
    table = gen(rows, sim, tmp_path / "out", max_reasks=0, cache=False)
    status = table.column("status").to_pylist()
    assert status == ["succeeded", "failed", "failed", "succeeded"]
    codes = table.column("error_code").to_pylist()
    assert codes[1] == codes[2] == "invalid_output"
    messages = table.column("error_message").to_pylist()
    assert "row 1" in messages[1] and "year" in messages[1]
    assert "row 2" in messages[2] and "not valid JSON" in messages[2]
    raw = table.column("raw_output").to_pylist()
    assert raw[0] is None and raw[1] and raw[2] and raw[2].startswith("{")
    assert table.column("year").to_pylist()[1] is None
    # The wrong answer was billed, so it is counted.
    assert table.column("cost").to_pylist()[1] > 0
    assert table.column("completion_tokens").to_pylist()[1] > 0


def test_bad_rows_fail_alone_naming_row_and_column(sim: SimProcess, tmp_path: Path) -> None:
    rows = topics(5, "mixed")
    rows[2]["topic"] = None

    def prompt(row: dict[str, Any]) -> Any:
        if row["id"] == 3:
            raise ValueError("no prompt for three")
        if row["id"] == 4:
            return 42
        return f"A book about {row['topic']}."

    before = requests_sent(sim)
    by_template = gen(rows, sim, tmp_path / "a")
    assert by_template.column("status").to_pylist()[2] == "failed"
    message = by_template.column("error_message").to_pylist()[2]
    assert "row 2" in message and "'topic'" in message
    by_function = gen(rows, sim, tmp_path / "b", prompt=prompt, cache=False)
    status = by_function.column("status").to_pylist()
    assert status == ["succeeded", "succeeded", "succeeded", "failed", "failed"]
    errors = by_function.column("error_message").to_pylist()
    assert "row 3" in errors[3] and "ValueError: no prompt for three" in errors[3]
    assert "row 4" in errors[4] and "int 42" in errors[4]
    # Rows that could not be built were never sent.
    assert requests_sent(sim) - before == 4 + 3


def test_pydantic_model_and_nested_types(sim: SimProcess, tmp_path: Path) -> None:
    pydantic = pytest.importorskip("pydantic")

    class Author(pydantic.BaseModel):
        name: str
        born: int

    class Book(pydantic.BaseModel):
        title: str
        rating: float
        in_print: bool
        tags: list[str]
        author: Author

    table = gen(topics(6, "typed"), sim, tmp_path / "out", response_format=Book)
    types = {f.name: f.type for f in table.schema}
    assert types["rating"] == pa.float64()
    assert types["in_print"] == pa.bool_()
    assert types["tags"] == pa.list_(pa.string())
    assert types["author"] == pa.struct([("name", pa.string()), ("born", pa.int64())])
    assert table.column("status").to_pylist() == ["succeeded"] * 6
    first = table.slice(0, 1).to_pylist()[0]
    Book.model_validate({k: first[k] for k in Book.model_fields})


@pytest.mark.anyio
async def test_sync_generate_where_a_loop_is_running(sim: SimProcess, tmp_path: Path) -> None:
    """Jupyter runs cells inside a loop: the sync call must still work."""
    table = gen(topics(3, "notebook"), sim, tmp_path / "out")
    assert table.column("status").to_pylist() == ["succeeded"] * 3


def test_key_is_never_written(sim: SimProcess, tmp_path: Path) -> None:
    gen(topics(3, "secret"), sim, tmp_path / "out")
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_jsonl_and_csv_inputs(sim: SimProcess, tmp_path: Path) -> None:
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(f'{{"id": {i}, "topic": "line {i}"}}\n' for i in range(4)))
    csv = tmp_path / "in.csv"
    csv.write_text("id,topic\n" + "".join(f"{i},row {i}\n" for i in range(4)))
    for src in (jsonl, csv):
        table = gen(src, sim, tmp_path / src.suffix[1:])
        assert table.column("id").to_pylist() == [0, 1, 2, 3]
        assert table.column("status").to_pylist() == ["succeeded"] * 4


def test_result_reads_into_dataframes(sim: SimProcess, tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    table = gen(topics(3, "frames"), sim, tmp_path / "out")
    frame = pd.read_parquet(tmp_path / "out" / "output.parquet")
    assert list(frame["year"]) == table.column("year").to_pylist()
    assert str(frame["year"].dtype) == "int64"


def test_cli_generate_writes_output_parquet(sim: SimProcess, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from runner.cli import cli

    src = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(topics(5, "cli")), src)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Name a book about {topic}.")
    args = ["generate", str(src), "--prompt", f"@{prompt}", "--schema", str(schema)]
    args += ["--out", str(tmp_path / "out"), "--base-url", sim.base_url, "--no-progress"]
    result = CliRunner().invoke(cli, args, env={"ZAI_API_KEY": KEY})
    assert result.exit_code == 0, result.output
    assert "5 succeeded, 0 failed" in result.output
    table = pq.read_table(tmp_path / "out" / "output.parquet")
    assert table.schema.field("year").type == pa.int64()
    again = CliRunner().invoke(cli, [*args[:2], "--prompt", "About {nope}", *args[4:]])
    assert again.exit_code == 2 and "'nope'" in again.output
    resume = CliRunner().invoke(cli, ["resume", str(tmp_path / "out")])
    assert resume.exit_code == 2 and "runner generate" in resume.output


KILLED_JOB = """
import sys
import runner
runner.generate(
    sys.argv[1], prompt="Name a book about {topic}.", model="glm-4.5-air", out=sys.argv[2],
    response_format=%r, base_url=sys.argv[3], concurrency=20, cache=True, progress=False,
)
"""


def terminal_rows(out: Path) -> int:
    if not (out / "checkpoint.sqlite").exists():
        return 0
    conn = sqlite3.connect(f"file:{out / 'checkpoint.sqlite'}?mode=ro", uri=True, timeout=5)
    try:
        return int(
            conn.execute(
                "SELECT COUNT(*) FROM rows WHERE status IN ('succeeded', 'failed')"
            ).fetchone()[0]
        )
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def test_killed_midway_resumes_and_sends_only_what_is_left(tmp_path: Path) -> None:
    src = tmp_path / "input.parquet"
    pq.write_table(pa.Table.from_pylist(topics(400, "killed")), src)
    script = tmp_path / "job.py"
    script.write_text(KILLED_JOB % (SCHEMA,))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with SimProcess("--latency", "0.2") as slow:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(src), str(out), slow.base_url], env=env
        )
        deadline = time.monotonic() + 60
        while terminal_rows(out) < 100 and time.monotonic() < deadline:
            assert proc.poll() is None, "the job ended before it could be killed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = terminal_rows(out)
        assert 100 <= done < 400
        before = requests_sent(slow)
        table = gen(src, slow, out, cache=True)
        sent = requests_sent(slow) - before
    assert table.num_rows == 400
    assert table.column("status").to_pylist() == ["succeeded"] * 400
    assert table.column("id").to_pylist() == list(range(400))
    # Only rows without a committed result are asked again; the cache answers the ones whose
    # answer was cached before the kill, so at most the rest are sent.
    assert sent <= 400 - done


def test_two_jobs_share_the_cache_at_once(sim: SimProcess, tmp_path: Path) -> None:
    src = tmp_path / "input.parquet"
    pq.write_table(pa.Table.from_pylist(topics(300, "shared")), src)
    script = tmp_path / "job.py"
    script.write_text(KILLED_JOB % (SCHEMA,))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(src), str(tmp_path / f"out{i}"), sim.base_url],
            env=env,
        )
        for i in range(2)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    tables = [pq.read_table(tmp_path / f"out{i}" / "output.parquet") for i in range(2)]
    for t in tables:
        assert t.column("status").to_pylist() == ["succeeded"] * 300
    assert tables[0].column("title").equals(tables[1].column("title"))
    cache = ResponseCache(tmp_path / "xdg-cache" / "glm-batch-runner")
    try:
        assert len(cache) == 300
    finally:
        cache.close()
    before = requests_sent(sim)
    third = gen(src, sim, tmp_path / "out3", cache=True)
    assert requests_sent(sim) == before
    assert third.column("cached").to_pylist() == [True] * 300


def test_budget_stop_raises_and_a_second_call_resumes(sim: SimProcess, tmp_path: Path) -> None:
    rows = topics(40, "budget")
    with pytest.raises(JobStopped, match="max-cost"):
        gen(rows, sim, tmp_path / "out", max_cost="0.0001", concurrency=2, cache=False)
    table = gen(rows, sim, tmp_path / "out", cache=False)
    assert table.column("status").to_pylist() == ["succeeded"] * 40


def test_an_unusable_cache_only_warns(sim: SimProcess, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    with pytest.warns(RuntimeWarning, match="without the response cache"):
        table = gen(topics(3, "nocache"), sim, tmp_path / "out", cache_dir=blocked / "cache")
    assert table.column("status").to_pylist() == ["succeeded"] * 3


def test_the_python_sample_runs(tmp_path: Path) -> None:
    pytest.importorskip("pydantic")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run(
        [sys.executable, str(root / "samples" / "generate_books.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = pq.read_table(tmp_path / "runs" / "books-py" / "output.parquet")
    assert table.num_rows == 12
    assert table.schema.field("pages").type == pa.int64()
    assert table.column("status").to_pylist() == ["succeeded"] * 12


def test_a_loopback_server_needs_no_key(
    sim: SimProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ZAI_API_KEY")
    table = gen(topics(2, "nokey"), sim, tmp_path / "out")
    assert table.column("status").to_pylist() == ["succeeded"] * 2
    with pytest.raises(UsageError, match="ZAI_API_KEY"):
        runner.generate(
            topics(2), prompt="{topic}", model="glm-4.5-air", out=tmp_path / "remote",
            base_url="https://api.example.invalid/v4", progress=False,
        )  # fmt: skip


def test_a_marker_in_the_system_text_spoils_each_row_once(sim: SimProcess, tmp_path: Path) -> None:
    before = requests_sent(sim)
    table = gen(topics(5, "system-marker"), sim, tmp_path / "out", system="[[sim:wrong-type-once]]")
    assert requests_sent(sim) - before == 10
    assert table.column("attempts").to_pylist() == [2] * 5
    assert table.column("status").to_pylist() == ["succeeded"] * 5


def test_a_pandas_dataframe_in_and_out(sim: SimProcess, tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(topics(4, "frame"))
    table = gen(frame, sim, tmp_path / "out")
    back = table.to_pandas()
    assert list(back["id"]) == [0, 1, 2, 3]
    assert str(back["year"].dtype) == "int64"
    assert list(back["status"]) == ["succeeded"] * 4
