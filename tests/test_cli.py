"""The CLI contract: every exit code, status JSON against the simulator's ledger, and kill -9."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from simproc import SimProcess

from jobs import write_spec
from runner.cli import cli
from runner.cost import format_cost
from runner.job import checkpoint_path
from runner.store import Store

KEY = "cli-test-key-0d9e8f7a"


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    s = SimProcess("--latency", "0.02")
    try:
        yield s
    finally:
        s.stop()


def numbered_spec(path: Path, n: int, marker: dict[int, str] | None = None) -> Path:
    """n chat rows c0..c{n-1}; `marker` adds a simulator marker to some prompts."""
    marker = marker or {}
    return write_spec(
        path,
        (
            {
                "custom_id": f"c{i}",
                "url": "/v4/chat/completions",
                "body": {
                    "model": "glm-4.5-air",
                    "messages": [{"role": "user", "content": f"prompt {i} {marker.get(i, '')}"}],
                },
            }
            for i in range(n)
        ),
    )


def run_cmd(spec: Path, out: Path, base_url: str, *, concurrency: int) -> list[str]:
    """`runner run` as a real process would be started by a user."""
    return [
        sys.executable, "-m", "runner", "run", str(spec), "--out", str(out),
        "--base-url", base_url, "--concurrency", str(concurrency), "--no-progress",
    ]  # fmt: skip


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), env={"ZAI_API_KEY": KEY, **(env or {})})


def test_exit_0_and_status_json_matches_ledger(tmp_path: Path, sim: SimProcess) -> None:
    spec = numbered_spec(tmp_path / "s.jsonl", 60)
    out = tmp_path / "out"
    r = invoke("run", str(spec), "--out", str(out), "--base-url", sim.base_url, "--no-progress")
    assert r.exit_code == 0, r.output
    status = json.loads(invoke("status", str(out), "--json").output)
    stats = sim.stats()
    assert (status["total"], status["succeeded"], status["failed"], status["pending"]) == (
        60,
        60,
        0,
        0,
    )
    assert status["tokens"]["prompt_tokens"] == stats["billed"]["prompt_tokens"]
    assert status["tokens"]["completion_tokens"] == stats["billed"]["completion_tokens"]
    assert status["cost"]["currency"] == "USD"
    assert set(status["cost"]["by_model"]) == {"glm-4.5-air"}
    assert status["cost"]["total"] > 0
    assert KEY not in r.output


def test_exit_1_with_failed_rows_and_export(tmp_path: Path, sim: SimProcess) -> None:
    spec = numbered_spec(tmp_path / "s.jsonl", 10, {4: "[[sim:1301]]"})
    out = tmp_path / "out"
    r = invoke("run", str(spec), "--out", str(out), "--base-url", sim.base_url, "--no-progress")
    assert r.exit_code == 1, r.output
    human = invoke("status", str(out)).output
    assert "1301" in human
    r = invoke("export", str(out), "--format", "jsonl", "-o", str(tmp_path / "o.jsonl"))
    assert r.exit_code == 0
    lines = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(lines) == 10
    assert [x["custom_id"] for x in lines if x.get("error")] == ["c4"]
    r = invoke("export", str(out), "--format", "parquet", "-o", str(tmp_path / "o.parquet"))
    assert r.exit_code == 0 and (tmp_path / "o.parquet").stat().st_size > 0


def test_exit_2_strict_sends_nothing(tmp_path: Path, sim: SimProcess) -> None:
    spec = numbered_spec(tmp_path / "s.jsonl", 5)
    with spec.open("ab") as f:
        f.write(b'{"url": "/v4/chat/completions", "body": {"messages": []}}\n')
    r = invoke(
        "run",
        str(spec),
        "--out",
        str(tmp_path / "out"),
        "--base-url",
        sim.base_url,
        "--strict",
        "--no-progress",
    )
    assert r.exit_code == 2, r.output
    assert "line 6" in r.output
    assert sum(sim.stats()["requests"].values()) == 0


def test_exit_2_validate_and_usage_errors(tmp_path: Path) -> None:
    spec = numbered_spec(tmp_path / "s.jsonl", 3)
    assert invoke("validate", str(spec)).exit_code == 0
    with spec.open("ab") as f:
        f.write(b"not json\n")
    r = invoke("validate", str(spec))
    assert r.exit_code == 2 and "line 4" in r.output
    r = invoke("run", str(spec), "--no-progress")
    assert r.exit_code == 2 and "--out" in r.output
    r = CliRunner().invoke(
        cli, ["run", str(spec), "--out", str(tmp_path / "o"), "--provider", "zhipu"], env={}
    )
    assert r.exit_code == 2 and "ZHIPUAI_API_KEY" in r.output


def test_exit_3_on_balance_then_resume(tmp_path: Path) -> None:
    sim = SimProcess("--balance-requests", "20")
    try:
        spec = numbered_spec(tmp_path / "s.jsonl", 50)
        out = tmp_path / "out"
        r = invoke(
            "run",
            str(spec),
            "--out",
            str(out),
            "--base-url",
            sim.base_url,
            "--concurrency",
            "4",
            "--no-progress",
        )
        assert r.exit_code == 3, r.output
        assert "runner resume" in r.output and "recharge" in r.output.lower()
        sim.configure(balance_requests=None)
        r = invoke("resume", str(out), "--no-progress")
        assert r.exit_code == 0, r.output
        stats = sim.stats()
        assert stats["billed"]["requests"] == 50
        assert not stats["duplicates"]["fingerprint"]
    finally:
        sim.stop()


def test_job_file_runs(tmp_path: Path, sim: SimProcess) -> None:
    spec = tmp_path / "short.jsonl"
    spec.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n' * 3)
    job = tmp_path / "job.toml"
    job.write_text(
        f'spec = "short.jsonl"\nout = "out"\nprovider = "zai"\nbase_url = "{sim.base_url}"\n'
        'model = "glm-4.5-air"\nendpoint = "chat/completions"\ntier = "V0"\n'
        "[body]\ntemperature = 0.2\n"
    )
    r = invoke("run", str(job), "--no-progress")
    assert r.exit_code == 0, r.output
    store = Store(checkpoint_path(tmp_path / "out"))
    try:
        assert store.summary()["succeeded"] == 3
    finally:
        store.close()


def test_kill_9_and_resume_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL the runner at random moments, resume until done: one result per row."""
    sim = SimProcess("--latency", "0.05")
    n = 5000
    spec = numbered_spec(tmp_path / "s.jsonl", n)
    out = tmp_path / "out"
    env = {**os.environ, "ZAI_API_KEY": KEY}
    cmd = run_cmd(spec, out, sim.base_url, concurrency=50)
    rng = random.Random(1)
    kills = 0
    try:
        # Kill at random moments while the job runs, then let the last run finish: a loaded
        # machine must not turn the test into a race against start-up time.
        while kills < 8:
            proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
            try:
                rc = proc.wait(timeout=rng.uniform(0.5, 1.5))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                continue
            assert rc == 0
            break
        else:
            rc = subprocess.run(cmd, env=env, stderr=subprocess.DEVNULL, timeout=180).returncode
            assert rc == 0
        stats = sim.stats()
    finally:
        sim.stop()
    assert kills >= 3
    store = Store(checkpoint_path(out))
    try:
        s = store.summary()
        assert (s["succeeded"], s["failed"], s["pending"]) == (n, 0, 0)
        assert store.integrity_check() == "ok"
        rows = store.db.execute(
            "SELECT COUNT(DISTINCT custom_id), SUM(cost_nano), "
            "SUM(prompt_tokens * 200 + completion_tokens * 1100) FROM rows"
        )
        distinct, cost, recomputed = rows.fetchone()
        assert distinct == n
        # The bill is the sum of the recorded answers' usage, each row counted once.
        assert cost == recomputed
    finally:
        store.close()
    # Only answers lost with a killed process (in flight or not yet committed) are paid twice:
    # at most one cap of rows plus one commit batch per kill.
    dupes = sum(c - 1 for c in stats["submissions_by_fingerprint"].values() if c > 1)
    assert dupes <= kills * (50 + 512)
    assert stats["billed"]["requests"] == n + dupes


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_graceful_stop_exit_3_then_resume_bills_nothing_twice(
    tmp_path: Path, signum: signal.Signals
) -> None:
    sim = SimProcess("--latency", "0.1")
    n = 800
    spec = numbered_spec(tmp_path / "s.jsonl", n)
    out = tmp_path / "out"
    env = {**os.environ, "ZAI_API_KEY": KEY}
    cmd = run_cmd(spec, out, sim.base_url, concurrency=20)
    try:
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while sim.stats()["billed"]["requests"] < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 3, err
        assert "runner resume" in err
        first = Store(checkpoint_path(out))
        try:
            done = first.summary()["succeeded"]
        finally:
            first.close()
        assert 0 < done < n
        # Every answer the platform billed before the stop was recorded.
        assert sim.stats()["billed"]["requests"] == done
        # A signal stop leaves the export to the end (or to `runner export`), so it is quick.
        assert not (out / "results.parquet").exists() and "runner export" in err
        part = tmp_path / "part.parquet"
        exported = CliRunner().invoke(cli, ["export", str(out), "-o", str(part)])
        assert exported.exit_code == 0 and pq.read_table(part).num_rows == done
        r = subprocess.run(
            [sys.executable, "-m", "runner", "resume", str(out), "--no-progress"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert pq.read_table(out / "results.parquet").num_rows == n
        stats = sim.stats()
    finally:
        sim.stop()
    assert stats["billed"]["requests"] == n
    assert not stats["duplicates"]["fingerprint"]
    assert KEY not in err


def test_status_shows_each_cause_under_a_code(tmp_path: Path, sim: SimProcess) -> None:
    """Two invalid JSON lines and a row without messages are all `invalid_row`, but they are
    different causes: status lists each with its first lines, and points to the rest."""
    spec = numbered_spec(tmp_path / "s.jsonl", 4, {1: "[[sim:1301]]"})
    with spec.open("ab") as f:
        f.write(b'{"custom_id": "j1", "body": {\n')
        f.write(b'{"custom_id": "m", "url": "/v4/chat/completions", "body": {"model": "x"}}\n')
        f.write(b'{"custom_id": "j2", "body": {"model": [\n')
    out = tmp_path / "out"
    r = invoke("run", str(spec), "--out", str(out), "--base-url", sim.base_url, "--no-progress")
    assert r.exit_code == 1, r.output
    groups = json.loads(invoke("status", str(out), "--json").output)["errors"]
    assert [(g["code"], g["rows"], g["lines"]) for g in groups] == [
        ("invalid_row", 2, [5, 7]),
        ("1301", 1, [2]),
        ("invalid_row", 1, [6]),
    ]
    human = invoke("status", str(out)).output
    assert "2 × invalid_row: line 5: invalid JSON" in human and "(lines 5, 7)" in human
    assert "1 × invalid_row: line 6, field body.messages" in human
    assert f"runner validate {spec}" in human and "results.parquet" in human


def test_invalid_rows_warn_and_a_spec_with_none_valid_exits_2(
    tmp_path: Path, sim: SimProcess
) -> None:
    spec = numbered_spec(tmp_path / "s.jsonl", 3)
    with spec.open("ab") as f:
        f.write(b"{\n")
    r = invoke("run", str(spec), "--out", str(tmp_path / "a"), "--base-url", sim.base_url,
               "--no-progress")  # fmt: skip
    assert r.exit_code == 1
    assert "warning: invalid row" in r.stderr and "line 4" in r.stderr
    assert f"1 row is invalid and recorded as failed; `runner validate {spec}`" in r.stderr
    # The result is on stdout for scripts; warnings stay on stderr.
    assert r.stdout.startswith("finished: 3 succeeded, 1 failed") and "warning" not in r.stdout
    sent = sum(sim.stats()["requests"].values())

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"prompt": "image or video?"}\n{\n')
    r = invoke("run", str(bad), "--out", str(tmp_path / "b"), "--base-url", sim.base_url,
               "--no-progress")  # fmt: skip
    assert r.exit_code == 2, r.output
    assert "nothing was sent: all 2 rows are invalid" in r.stderr
    assert sum(sim.stats()["requests"].values()) == sent


def test_short_chat_rows_need_no_endpoint_flag(tmp_path: Path, sim: SimProcess) -> None:
    spec = tmp_path / "short.jsonl"
    spec.write_bytes(
        b'{"model": "glm-4.5-air", "messages": [{"role": "user", "content": "Hi"}]}\n'
        b'{"model": "embedding-3", "input": "Hi"}\n'
    )
    r = invoke("run", str(spec), "--out", str(tmp_path / "o"), "--base-url", sim.base_url,
               "--no-progress")  # fmt: skip
    assert r.exit_code == 0, r.output


def test_out_that_is_a_file_names_the_problem(tmp_path: Path) -> None:
    spec = numbered_spec(tmp_path / "s.jsonl", 1)
    r = invoke("run", str(spec), "--out", str(spec), "--provider", "sim", "--no-progress")
    assert r.exit_code == 2
    assert "a file of that name is in the way" in r.output and "Errno" not in r.output


def test_costs_keep_significant_digits() -> None:
    assert format_cost(280, "USD") == "0.00000028 USD"  # not 0.000000
    assert format_cost(122_000, "USD") == "0.000122 USD"
    assert format_cost(5_000_000_000, "CNY") == "5.000000 CNY"
    assert format_cost(0, "USD") == "0 USD"
