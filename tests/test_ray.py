"""`--engine ray`: a job in shards on a local Ray instance (2 CPUs), against the simulator
as a real process. Skipped where Ray is not installed, unless RUNNER_REQUIRE_RAY=1 (CI
sets it), which turns the skip into a failure."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from runner.cli import cli
from runner.job import EXIT_OK
from tests.jobs import KEY, chat_row, settings_for, write_spec
from tests.simproc import SimProcess

try:
    import ray
except ImportError:  # pragma: no cover - depends on the machine
    ray = None


@pytest.fixture(scope="module")
def node_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The node's own space for its shards' checkpoints (RUNNER_SHARD_DIR), not the job's."""
    return tmp_path_factory.mktemp("node")


@pytest.fixture(scope="module")
def local_ray(node_dir: Path) -> Iterator[None]:
    """One local Ray instance for the module; every process it started is gone after."""
    if ray is None:
        reason = "Ray is not installed: pip install -e '.[ray]'"
        if os.environ.get("RUNNER_REQUIRE_RAY") == "1":
            pytest.fail(f"RUNNER_REQUIRE_RAY=1 but {reason}")
        pytest.skip(reason)
    # Workers inherit the driver's environment: the key reaches them there, never via Ray.
    env = {"ZAI_API_KEY": KEY, "RUNNER_SHARD_DIR": str(node_dir)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    session = Path(ray._private.worker._global_node.get_session_dir_path()).name
    try:
        yield
    finally:
        ray.shutdown()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        left = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
        assert not [line for line in left.splitlines() if session in line], left


def _run(tmp_path: Path, sim: SimProcess, rows: int, shards: int, **kw: Any) -> Any:
    from runner.ray_engine import run_sharded

    spec = tmp_path / "spec.jsonl"
    if not spec.exists():
        write_spec(spec, (chat_row(i) for i in range(rows)))
    settings = settings_for(tmp_path / "out", spec, sim.base_url, **kw).with_key_from_env()
    return run_sharded(settings, shards)


def _sent(sim: SimProcess) -> int:
    return int(sim.stats()["requests"].get("chat/completions", 0))


def test_two_shards_one_job_one_answer_and_a_rerun_sends_nothing(
    tmp_path: Path, local_ray: None, node_dir: Path
) -> None:
    with SimProcess("--concurrency", "8", "--latency", "0.02") as sim:
        result = _run(tmp_path, sim, 200, 2, concurrency=8)
        assert result.exit_code == EXIT_OK, result.message
        assert _sent(sim) == 200
        table = pq.read_table(tmp_path / "out" / "results.parquet").to_pydict()
        assert table["custom_id"] == [f"row-{i}" for i in range(200)]  # one each, spec order
        assert set(table["status"]) == {"succeeded"}
        # The shards kept their checkpoints on the node, shipped them, and left nothing
        # there; the job's folder holds the plan and the one checkpoint of the job.
        assert [p.name for p in (tmp_path / "out" / "shards").iterdir()] == ["plan.json"]
        assert list(node_dir.iterdir()) == []
        out = CliRunner().invoke(cli, ["status", str(tmp_path / "out"), "--json"])
        assert out.exit_code == 0, out.output
        assert '"succeeded": 200' in out.output
        again = _run(tmp_path, sim, 200, 2, concurrency=8)
        assert again.exit_code == EXIT_OK
        assert _sent(sim) == 200  # nothing was sent twice
        assert again.summary["succeeded"] == 200
    for f in (tmp_path / "out").rglob("*"):
        assert f.is_dir() or KEY.encode() not in f.read_bytes(), f


def test_four_shards_hold_the_cap_together(tmp_path: Path, local_ray: None) -> None:
    with SimProcess("--concurrency", "8", "--latency", "0.05") as sim:
        result = _run(tmp_path, sim, 400, 4, concurrency=8)
        stats = sim.stats()
    assert result.exit_code == EXIT_OK, result.message
    assert stats["requests"]["chat/completions"] == 400
    assert stats["statuses"] == {"200": 400}  # not one 429
    peak = max(m for per_model in stats["peak_concurrency"].values() for m in per_model.values())
    assert 1 < peak <= 8


def test_arrears_in_a_shard_stops_the_job_and_a_rerun_finishes_it(
    tmp_path: Path, local_ray: None
) -> None:
    with SimProcess("--balance-requests", "100", "--latency", "0.02") as sim:
        first = _run(tmp_path, sim, 300, 3, concurrency=4)
        assert first.exit_code == 3, first.message
        assert "refused the account" in first.message
        assert "resume" in first.message
        assert first.summary["pending"] > 0
        assert first.summary["succeeded"] == sim.stats()["billed"]["requests"]
        sim.configure(balance_requests=None)
        again = _run(tmp_path, sim, 300, 3, concurrency=4)
        billed = sim.stats()["billed"]["requests"]
    assert again.exit_code == EXIT_OK, again.message
    assert billed == 300  # every row billed once, over the two runs
    table = pq.read_table(tmp_path / "out" / "results.parquet").to_pydict()
    assert table["custom_id"] == [f"row-{i}" for i in range(300)]


def test_a_lost_worker_is_retried_and_resumes_its_shard(
    tmp_path: Path, local_ray: None, node_dir: Path
) -> None:
    import signal
    import sqlite3
    import threading
    import time

    job = tmp_path / "out" / "checkpoint.sqlite"
    with SimProcess("--concurrency", "4", "--latency", "0.05") as sim:
        box: list[Any] = []
        thread = threading.Thread(
            target=lambda: box.append(_run(tmp_path, sim, 300, 2, concurrency=4))
        )
        thread.start()
        deadline = time.monotonic() + 60
        pid_file = None
        while time.monotonic() < deadline:
            pid_file = next(node_dir.glob("*/r*/0000/worker.pid"), None)
            try:
                with sqlite3.connect(job) as db:
                    done = db.execute("SELECT COUNT(*) FROM rows WHERE seq < 150").fetchone()[0]
            except sqlite3.Error:
                done = 0
            if pid_file is not None and done >= 20:  # shipped to the driver, merged
                break
            time.sleep(0.05)
        assert pid_file is not None
        victim = int(pid_file.read_text())
        os.kill(victim, signal.SIGKILL)
        while time.monotonic() < deadline and pid_file.exists():
            if pid_file.read_text().strip() not in ("", str(victim)):
                break  # run again, in another process
            time.sleep(0.05)
        thread.join(timeout=120)
        sent = _sent(sim)
    assert box and box[0].exit_code == EXIT_OK, box and box[0].message
    table = pq.read_table(tmp_path / "out" / "results.parquet").to_pydict()
    assert table["custom_id"] == [f"row-{i}" for i in range(300)]
    # Sent again: only what was on the wire when it died, or answered and not yet committed
    # (the writer commits every 0.2 s): far from the shard's 150 rows. The retry found its
    # checkpoint on the node and shipped it all again, which sends nothing.
    assert 300 <= sent <= 300 + 40


def test_the_command_line_runs_and_resumes_on_ray(tmp_path: Path, local_ray: None) -> None:
    spec = write_spec(tmp_path / "spec.jsonl", (chat_row(i) for i in range(40)))
    out = tmp_path / "out"
    with SimProcess("--concurrency", "4") as sim:
        args = ["run", str(spec), "--out", str(out), "--base-url", sim.base_url]
        args += ["--concurrency", "4", "--no-progress", "--engine", "ray", "--shards", "2"]
        first = CliRunner().invoke(cli, args)
        assert first.exit_code == 0, first.output
        again = CliRunner().invoke(cli, ["resume", str(out), "--no-progress"])
        assert again.exit_code == 0, again.output
        assert _sent(sim) == 40
    assert "40 succeeded" in again.output
    assert not list((out / "shards").glob("0*"))  # the shards' checkpoints stay on the nodes
    bad = CliRunner().invoke(cli, ["run", str(spec), "--out", str(out), "--shards", "2"])
    assert bad.exit_code == 2 and "--engine ray" in bad.output


def test_async_tasks_are_submitted_once_across_shards(tmp_path: Path, local_ray: None) -> None:
    from runner.ray_engine import run_sharded

    rows: list[dict[str, Any]] = [chat_row(i) for i in range(6)]
    for i in range(6):
        body = {"model": "cogvideox-3", "prompt": f"waves {i}"}
        rows.append({"custom_id": f"video-{i}", "url": "/v4/videos/generations", "body": body})
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    with SimProcess("--task-seconds", "0.2") as sim:
        settings = settings_for(tmp_path / "out", spec, sim.base_url).with_key_from_env()
        first = run_sharded(settings, 3)
        again = run_sharded(settings, 3)
        stats = sim.stats()
    assert first.exit_code == EXIT_OK, first.message
    assert again.exit_code == EXIT_OK, again.message
    assert stats["requests"]["videos/generations"] == 6  # each submitted once
    assert stats["requests"]["chat/completions"] == 6
    table = pq.read_table(tmp_path / "out" / "results.parquet").to_pydict()
    assert table["custom_id"] == [r["custom_id"] for r in rows]


def _descendants(pid: int) -> set[int]:
    table = subprocess.run(["ps", "-eo", "pid,ppid"], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in table.splitlines()[1:]:
        child, parent = (int(x) for x in line.split())
        children.setdefault(parent, []).append(child)
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_stops_every_shard_and_the_local_ray_it_started(
    tmp_path: Path, local_ray: None
) -> None:
    import signal
    import sys
    import time

    spec = write_spec(tmp_path / "spec.jsonl", (chat_row(i) for i in range(1000)))
    out = tmp_path / "out"
    env = {**os.environ, "ZAI_API_KEY": KEY}
    env.pop("RAY_ADDRESS", None)
    with SimProcess("--concurrency", "8", "--latency", "0.1") as sim:
        args = [sys.executable, "-m", "runner", "run", str(spec), "--out", str(out)]
        args += ["--base-url", sim.base_url, "--concurrency", "8", "--no-progress"]
        args += ["--engine", "ray", "--shards", "2"]
        proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 90
        while _sent(sim) < 50 and time.monotonic() < deadline:
            time.sleep(0.1)
        started = _descendants(proc.pid)  # its own Ray: gcs, raylet, workers
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 3, err[-2000:]
        assert "stopped by a signal" in err and "runner resume" in err
        time.sleep(1)
        assert not [p for p in started if _alive(p)], "a process it started is still running"
        again = _run(tmp_path, sim, 1000, 2, concurrency=8)
        sent = _sent(sim)
    assert again.exit_code == EXIT_OK, again.message
    assert sent <= 1000 + 8 * 2  # the stop let the requests in flight be answered


def test_a_parquet_spec_is_sharded_by_row_groups(tmp_path: Path, local_ray: None) -> None:
    import pyarrow as pa

    from runner.ray_engine import run_sharded

    spec = tmp_path / "spec.parquet"
    n = 90
    table = pa.table(
        {
            "custom_id": [f"row-{i}" for i in range(n)],
            "model": ["glm-4.5-air"] * n,
            "messages": [[{"role": "user", "content": f"q {i}"}] for i in range(n)],
        }
    )
    pq.write_table(table, spec, row_group_size=30)
    with SimProcess("--concurrency", "4") as sim:
        settings = settings_for(tmp_path / "out", spec, sim.base_url, concurrency=4)
        result = run_sharded(settings.with_key_from_env(), 3)
        assert _sent(sim) == n
    assert result.exit_code == EXIT_OK, result.message
    ids = pq.read_table(tmp_path / "out" / "results.parquet").column("custom_id").to_pylist()
    assert ids == [f"row-{i}" for i in range(n)]
    plan = orjson.loads((tmp_path / "out" / "shards" / "plan.json").read_bytes())
    assert len(plan["shards"]) == 3


def test_retry_on_ray_sends_only_the_chosen_rows(tmp_path: Path, local_ray: None) -> None:
    refused = {3, 11, 17}
    rows = (
        chat_row(i, text=f"row {i}" + (" [[sim:1301]]" if i in refused else "")) for i in range(24)
    )
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    out = tmp_path / "out"
    with SimProcess() as sim:
        args = ["run", str(spec), "--out", str(out), "--base-url", sim.base_url]
        args += ["--no-progress", "--engine", "ray", "--shards", "2"]
        first = CliRunner().invoke(cli, args)
        assert first.exit_code == 1 and "3 failed" in first.output, first.output
        billed = sim.stats()["billed"]["requests"]
        sim.configure(code_markers=False)
        again = CliRunner().invoke(cli, ["retry", str(out), "--code", "1301", "--no-progress"])
        assert again.exit_code == 0 and "0 failed" in again.output, again.output
        assert sim.stats()["billed"]["requests"] == billed + len(refused)
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert {r["custom_id"] for r in table if r["attempts"] == 2} == {
        chat_row(i)["custom_id"] for i in refused
    }
