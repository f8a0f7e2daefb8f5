"""results.parquet follows the job: rows go to the file as soon as every row before them is
final, and the file a run leaves is the one a full export writes."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import reliability_harness as h
from simproc import SimProcess

import runner.online
from jobs import chat_row, settings_for, write_spec
from runner import run_job
from runner.errors import CheckpointError
from runner.export import FollowingResults, write_results_parquet
from runner.outcome import Outcome
from runner.results_writer import ResultsWriter
from runner.sim import SimConfig, Simulator
from runner.store import Store

ROOT = Path(__file__).resolve().parents[1]


def _outcome(seq: int, status: str = "succeeded") -> Outcome:
    return Outcome(
        seq=seq, custom_id=f"r{seq}", line=seq + 1, endpoint="chat/completions",
        model="glm-4.5-air", status=status, attempts=1, response='{"ok": true}',
        prompt_tokens=3, completion_tokens=5, cost_nano=1000 + seq, started_at=1.0,
        finished_at=2.0, task_id="t" if status == "submitted" else None,
    )  # fmt: skip


def _rows(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


def test_the_file_takes_final_rows_in_order_and_ends_as_the_export(tmp_path: Path) -> None:
    store = Store(tmp_path / "checkpoint.sqlite")
    total = 10_000
    store.record([_outcome(s) for s in range(total) if s not in (5000, 7000)])
    store.record([_outcome(7000, "submitted")])
    target = tmp_path / "results.parquet"
    follower = FollowingResults(store.path, target, stop=8000, earlier={3: (2, 500)})
    follower.follow()  # the rows before the gap at 5000
    assert follower.written == 5000 and not target.exists()
    store.record([_outcome(5000)])
    follower.follow()  # up to the open task at 7000
    assert follower.written == 7000
    store.record([_outcome(7000)])
    follower.follow()  # up to 8000, held (an earlier run's open row may still change)
    assert follower.written == 8000
    assert follower.close() == total
    assert not (tmp_path / "results.parquet.tmp").exists()
    exported = tmp_path / "export.parquet"
    write_results_parquet(store, exported)
    ours, theirs = _rows(target), _rows(exported)
    # The export reads the checkpoint's own attempts table (empty here); the follower was
    # handed the earlier attempts of row 3, and counts them as the export would.
    assert ours[3]["attempts"] == 3 and ours[3]["cost_nano"] == 1003
    ours[3]["attempts"], ours[3]["cost_all_attempts"] = 1, theirs[3]["cost_all_attempts"]
    assert ours == theirs
    store.close()


def test_a_failed_write_stops_following_and_the_job_exports_instead(tmp_path: Path) -> None:
    store = Store(tmp_path / "checkpoint.sqlite")
    long = '"' + "x" * 8000 + '"'  # 5,000 of these fill a row group: it goes to the disk
    store.record([replace(_outcome(s), response=long) for s in range(5000)])
    target = tmp_path / "results.parquet"
    # A disk that fills: files may not grow past 64 KiB (EFBIG, not a signal: an ignored
    # signal stays ignored in the writer's process too).
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, limit[1]))
    try:
        writer = ResultsWriter(store.path, target, 5000)
        writer.follow()
        assert writer.failed and not (tmp_path / "results.parquet.tmp").exists()
        with pytest.raises(CheckpointError, match="Every result is safe in the checkpoint"):
            writer.finish(store)  # it exports from the start, and meets the full disk again
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, old)
    assert not target.exists() and not (tmp_path / "results.parquet.tmp").exists()
    writer = ResultsWriter(store.path, target, 5000)  # room again: the writer's own file
    writer.follow()
    assert writer.written == 5000 and not target.exists()
    assert writer.finish(store) == 5000 and len(_rows(target)) == 5000
    store.close()


def test_the_writer_drops_its_file_when_the_job_is_gone(tmp_path: Path) -> None:
    """The writer's input closes with the job, however it ends (here: never told)."""
    store = Store(tmp_path / "checkpoint.sqlite")
    store.record([_outcome(s) for s in range(3000)])
    writer = ResultsWriter(store.path, tmp_path / "results.parquet", 3000)
    writer.follow()
    assert writer.written == 3000 and (tmp_path / "results.parquet.tmp").exists()
    proc = writer._proc
    assert proc is not None
    writer.abandon()
    assert proc.returncode == 0 and not list(tmp_path.glob("results.parquet*"))
    writer.abandon()  # twice: nothing left to do
    store.close()


@pytest.mark.anyio
async def test_a_job_writes_its_results_as_it_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner.online, "FOLLOW_FROM", 0.05)
    monkeypatch.setattr(runner.online, "FOLLOW_EVERY", 0.05)
    seen: list[int] = []
    follow = ResultsWriter.follow

    def spy(self: ResultsWriter) -> None:
        follow(self)
        seen.append(self.written)

    monkeypatch.setattr(ResultsWriter, "follow", spy)
    n = 6000
    spec = write_spec(tmp_path / "spec.jsonl", [chat_row(i) for i in range(n)])
    out = tmp_path / "out"
    async with Simulator(SimConfig(latency=0.01)) as sim:
        result = await run_job(
            settings_for(out, spec, sim.base_url, concurrency=50), handle_signals=False
        )
    assert result.exit_code == 0, result.message
    assert seen and 0 < max(seen) < n  # rows went to the file before the job ended
    store = Store(out / "checkpoint.sqlite", create=False)
    write_results_parquet(store, tmp_path / "export.parquet")
    store.close()
    assert _rows(out / "results.parquet") == _rows(tmp_path / "export.parquet")
    assert not list(out.glob("*.tmp"))


@pytest.mark.anyio
async def test_a_writer_that_cannot_start_leaves_the_export_to_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner.online, "FOLLOW_FROM", 0.01)

    def refused(*args: object) -> None:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(ResultsWriter, "__init__", refused)
    spec = write_spec(tmp_path / "spec.jsonl", [chat_row(i) for i in range(2000)])
    out = tmp_path / "out"
    async with Simulator(SimConfig(latency=0.01)) as sim:
        result = await run_job(
            settings_for(out, spec, sim.base_url, concurrency=20), handle_signals=False
        )
    assert result.exit_code == 0, result.message
    assert len(_rows(out / "results.parquet")) == 2000


def _job_writing_results(tmp_path: Path, sim: SimProcess) -> subprocess.Popen[bytes]:
    """`runner run` of 4,000 rows into tmp_path/out, once its results file has begun."""
    spec = h.write_spec(
        tmp_path / "spec.jsonl", [h.chat_line(f"r{i}", f"q {i}") for i in range(4000)]
    )
    out = tmp_path / "out"
    proc = subprocess.Popen(
        h.runner_cmd(spec, out, sim.base_url, "--concurrency", "50"),
        env=h.runner_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    tmp = out / "results.parquet.tmp"
    deadline = time.monotonic() + 30
    while not tmp.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tmp.exists()  # the writer has begun
    return proc


def test_a_stopped_run_leaves_no_results_file(tmp_path: Path) -> None:
    """SIGTERM after the file began: the run ends without it (the checkpoint holds every
    result; the next run that ends writes it), and no temp file stays behind."""
    out, tmp = tmp_path / "out", tmp_path / "out" / "results.parquet.tmp"
    with SimProcess("--latency", "0.2") as sim:
        proc = _job_writing_results(tmp_path, sim)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 3, err
        assert "runner export" in err.decode()
        assert not tmp.exists() and not (out / "results.parquet").exists()
        sim.configure(latency=0.0)
        r = subprocess.run(
            [sys.executable, "-m", "runner", "resume", str(out), "--no-progress"],
            env=h.runner_env(), cwd=ROOT, capture_output=True, timeout=120,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        rows = _rows(out / "results.parquet")
        assert len(rows) == 4000 and {r["status"] for r in rows} == {"succeeded"}
        assert [r["line"] for r in rows] == list(range(1, 4001))


def _writers_of(out: Path) -> list[int]:
    """Processes whose command line names the job's folder."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if str(out).encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
def test_a_killed_job_leaves_no_writer_and_no_temp_file(tmp_path: Path) -> None:
    out, tmp = tmp_path / "out", tmp_path / "out" / "results.parquet.tmp"
    with SimProcess("--latency", "0.2") as sim:
        proc = _job_writing_results(tmp_path, sim)
        assert len(_writers_of(out)) == 2  # the job and its writer
        proc.kill()
        proc.wait(30)
        deadline = time.monotonic() + 30
        while (tmp.exists() or _writers_of(out)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not tmp.exists() and _writers_of(out) == []
