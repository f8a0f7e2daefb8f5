"""`runner retry`: chosen finished rows sent again, as a new run of the same job, against the
simulator in a real process; every attempt stays on the bill."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import reliability_harness as h
from simproc import SimProcess

from runner.report.data import load_report

ROOT = Path(__file__).resolve().parents[1]
ROWS = 2000  # the done-when job: 150 rows cut, 100 refused
CUT = range(0, 150)  # max_tokens 3: the answer is cut (finish_reason length)
FILTERED = range(150, 250)  # the prompt carries [[sim:1301]]: refused until the server is mended


def _spec(path: Path) -> Path:
    lines = []
    for i in range(ROWS):
        line = h.chat_line(f"r{i}", f"row {i}" + (" [[sim:1301]]" if i in FILTERED else ""))
        line["body"]["max_tokens"] = 3 if i in CUT else 1024
        lines.append(line)
    return h.write_spec(path, lines)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        env=h.runner_env(), capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip


def _sent(sim: SimProcess) -> dict[str, int]:
    """Requests the server answered, by HTTP status (refused ones included)."""
    return dict(sim.stats()["statuses"])


def _worst(r: subprocess.CompletedProcess[str]) -> Decimal:
    """The worst-case figure a `retry --dry-run` prints (`retry: worst case 0.012 USD`)."""
    assert r.returncode == 0, r.stderr
    (line,) = [x for x in r.stderr.splitlines() if "worst case" in x]
    return Decimal(line.split("worst case ")[1].split()[0])


def _results(out: Path) -> dict[str, dict[str, Any]]:
    table = pq.read_table(out / "results.parquet").to_pylist()
    return {r["custom_id"]: r for r in table}


def test_retry_cut_then_refused_rows(tmp_path: Path) -> None:
    spec, out = _spec(tmp_path / "spec.jsonl"), tmp_path / "out"
    with SimProcess() as sim:
        r = cli("run", str(spec), "--out", str(out), "--base-url", sim.base_url, "--no-progress")
        assert r.returncode == 1, r.stderr
        first = _results(out)
        assert {c for c, row in first.items() if row["status"] == "failed"} == {
            f"r{i}" for i in FILTERED
        }
        before = sum(_sent(sim).values())
        assert before == ROWS

        r = cli("retry", str(out), "--dry-run", "--finish-reason", "length")
        assert r.returncode == 0 and f"{len(CUT)} rows chosen" in r.stderr, r.stderr
        assert sum(_sent(sim).values()) == before  # a dry run sends nothing
        # Its worst case bounds the answers by max_tokens, with the overrides applied.
        small = _worst(cli("retry", str(out), "--dry-run", "--finish-reason", "length"))
        big = _worst(
            cli("retry", str(out), "--dry-run", "--finish-reason", "length",
                "--set", "body.max_tokens=2048")
        )  # fmt: skip
        assert 0 < small < big
        half = _worst(
            cli("retry", str(out), "--dry-run", "--finish-reason", "length",
                "--set", "body.max_tokens=2048", "--mode", "batch")
        )  # fmt: skip
        assert abs(half - big / 2) < Decimal("1e-6")
        assert sum(_sent(sim).values()) == before

        # The report shows the truncated answers as their own group, and for each group of
        # failures the command that resends it.
        report = load_report(out / "checkpoint.sqlite")
        assert report["truncated"]["rows"] == len(CUT)
        assert "--finish-reason length" in report["truncated"]["retry"]
        (group,) = report["errors"]
        assert group["code"] == "1301" and group["retry"] == f"runner retry {out} --code 1301"
        assert cli("report", str(out)).returncode == 0
        page = (out / "report.html").read_text()
        assert "Truncated answers" in page and f"runner retry {out} --code 1301" in page
        # A refused retry leaves the job as it was: nothing made pending, nothing sent.
        r = cli("retry", str(out), "--code", "1301", "--shards", "2")
        assert r.returncode == 2 and "--engine ray" in r.stderr, r.stderr
        assert cli("retry", str(out), "--max-cost", "lots").returncode == 2
        assert json.loads(cli("status", str(out), "--json").stdout)["pending"] == 0
        assert sum(_sent(sim).values()) == before

        r = cli("retry", str(out), "--finish-reason", "length", "--set", "body.max_tokens=2048")
        assert r.returncode == 1, r.stderr  # the refused rows are still failed
        sent = _sent(sim)
        assert sum(sent.values()) == ROWS + len(CUT)  # exactly the cut rows, once each
        cut = _results(out)
        for i in CUT:
            row = cut[f"r{i}"]
            answer = json.loads(row["response"])
            assert answer["choices"][0]["finish_reason"] == "stop", row
            assert row["completion_tokens"] > 3 and row["attempts"] == 2
        assert cut["r1999"]["attempts"] == 1

        sim.configure(code_markers=False)  # the platform mended
        r = cli("retry", str(out), "--code", "1301")
        assert r.returncode == 0, r.stderr
        assert sum(_sent(sim).values()) == ROWS + len(CUT) + len(FILTERED)
        final = _results(out)
        assert all(row["status"] == "succeeded" for row in final.values())
        again = {f"r{i}" for i in (*CUT, *FILTERED)}
        assert {c for c, row in final.items() if row["attempts"] == 2} == again

        # The bill: every billed answer, the superseded cut ones included, as the server
        # counted them; and the cost in `runner status` is every attempt's.
        billed = sim.stats()["billed"]
        assert billed["requests"] == ROWS + len(CUT)
        with sqlite3.connect(out / "checkpoint.sqlite") as db:
            ours = [
                db.execute(f"SELECT SUM(prompt_tokens), SUM(completion_tokens) FROM {t}").fetchone()
                for t in ("rows", "attempts")
            ]
        assert billed["prompt_tokens"] == ours[0][0] + ours[1][0]
        assert billed["completion_tokens"] == ours[0][1] + ours[1][1]
        status = json.loads(cli("status", str(out), "--json").stdout)
        assert status["tokens"]["prompt_tokens"] == billed["prompt_tokens"]
        assert status["tokens"]["completion_tokens"] == billed["completion_tokens"]
        report = load_report(out / "checkpoint.sqlite")["summary"]
        assert sum(m["prompt_tokens"] for m in report["by_model"]) == billed["prompt_tokens"]
        assert Decimal(report["cost_nano"]) / 10**9 == Decimal(status["cost"]["total_exact"])
        every = sum(row["cost_all_attempts"] for row in final.values())
        assert abs(Decimal(status["cost"]["total_exact"]) - Decimal(str(every))) < Decimal("1e-9")
        assert every > sum(row["cost"] for row in final.values())


def test_retry_resumes_with_its_overrides_after_kill(tmp_path: Path) -> None:
    spec, out = _spec(tmp_path / "spec.jsonl"), tmp_path / "out"
    with SimProcess() as sim:
        cli("run", str(spec), "--out", str(out), "--base-url", sim.base_url, "--no-progress")
        sim.configure(latency=0.5)
        cmd = [sys.executable, "-m", "runner", "retry", str(out), "--finish-reason", "length",
               "--set", "body.max_tokens=2048", "--no-progress"]  # fmt: skip
        proc = subprocess.Popen(
            cmd, env=h.runner_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while sum(_sent(sim).values()) == ROWS and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.kill()  # kill -9 mid-retry: the cut rows are pending, their attempts kept
        proc.wait()
        sim.configure(latency=0.0)
        r = cli("resume", str(out), "--no-progress")
        assert r.returncode == 1, r.stderr  # the refused rows stay failed
        rows = _results(out)
        for i in CUT:
            answer = json.loads(rows[f"r{i}"]["response"])
            assert answer["choices"][0]["finish_reason"] == "stop"
            assert rows[f"r{i}"]["attempts"] >= 2
        # No row was answered more than in flight at the kill: the cut rows only, at most
        # twice each (the attempt the kill interrupted, then the resume).
        sent = _sent(sim)
        assert sum(sent.values()) <= ROWS + 2 * len(CUT)


def test_retry_in_batch_mode_sends_the_rows_as_a_batch_file(tmp_path: Path) -> None:
    spec, out = _spec(tmp_path / "spec.jsonl"), tmp_path / "out"
    with SimProcess() as sim:
        cli("run", str(spec), "--out", str(out), "--base-url", sim.base_url, "--no-progress")
        online = sim.stats()["billed"]["requests"]
        r = cli("retry", str(out), "--finish-reason", "length", "--set", "body.max_tokens=2048",
                "--mode", "batch", "--no-progress")  # fmt: skip
        assert r.returncode == 1, r.stderr  # the refused rows are still failed
        stats = sim.stats()
        assert stats["billed"]["requests"] == online  # no row went online ...
        batch = stats["batch"]
        assert batch["batches"] == 1 and batch["requests"] == len(CUT), batch  # ... one file did
        rows = _results(out)
        for i in CUT:
            row = rows[f"r{i}"]
            assert json.loads(row["response"])["choices"][0]["finish_reason"] == "stop"
            assert row["attempts"] == 2
            # Half price for the batch attempt; the superseded online one stays on the bill.
            assert row["cost_all_attempts"] > row["cost"]
