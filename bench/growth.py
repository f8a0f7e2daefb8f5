"""What grows with the job (issue 27): one job of N rows on loopback, watched from outside.

1. **The run.** `runner run` against a simulator process that answers every row with
   `--answer-words` words (180: about 1.2 KB of text, 1.6 KB of response JSON), C in
   flight, latency L. Five times a second: the runner's RSS (VmRSS) and the rows the
   simulator answered; the export's share is the time from the last answer to
   results.parquet in place (the file follows the job; the end writes its tail). After
   it: peak RSS (VmHWM), RSS at each tenth of the rows, rows/s in each tenth (from the
   checkpoint's per-second timeline, i.e. committed rows), checkpoint and results.parquet
   bytes per row.
2. **The commands that read it.** `runner status --json`, `runner export`, `runner report`
   on the finished checkpoint: wall, CPU and peak RSS of each.
3. **Resumes.** The checkpoint cut back to the rows of the first 90 %, 50 % and 10 % of the
   spec (a DELETE of the rest: what a job stopped there holds), then `runner resume` against
   the same simulator: seconds and CPU from process start to the first request the simulator
   sees (polled every 10 ms), then SIGKILL.

``--commits`` instead measures the checkpoint alone: N rows of the same size through
`Store.record` in 512-row batches, the commit time of each, per tenth.

    python bench/growth.py --rows 1000000 --concurrency 2000 --latency 0.02
    python bench/growth.py --rows 1000000 --commits
    python bench/growth.py --rows 1000000 --keep-response answer  # the checkpoint's answers

Prints the figures and writes them to bench/out/growth-*.json. The machine is shared: the
load average is recorded beside each phase.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from harness import (
    API_KEY,
    WORK,
    Child,
    Sim,
    _pin,
    compile_runner,
    process_cpu_s,
    tool_argv,
    write_spec,
)

ROOT = Path(__file__).resolve().parent.parent
ENV = {"ZAI_API_KEY": API_KEY, "PYTHONUNBUFFERED": "1"}


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _status_mb(pid: int, field: bytes) -> float:
    """A size from /proc/PID/status (VmRSS, VmHWM), in MB; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(field + b":"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def _rss_mb(pid: int) -> float:
    return _status_mb(pid, b"VmRSS")


def _hwm_mb(pid: int) -> float:
    return _status_mb(pid, b"VmHWM")


def _wal_index_mb(pid: int) -> float:
    """RSS of the process's mappings of SQLite's WAL index (checkpoint.sqlite-shm)."""
    total, inside = 0, False
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/smaps", "rb") as f:
        for line in f:
            if line[:1].isdigit() or line[:1] in b"abcdef":  # a mapping's first line
                inside = line.rstrip().endswith(b"-shm")
            elif inside and line.startswith(b"Rss:"):
                total += int(line.split()[1])
    return total / 1024


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):  # a child is listed under its thread
        with contextlib.suppress(OSError, ValueError):
            kids += [int(p) for p in (task / "children").read_text().split()]
    return kids


def _received(stats: dict[str, Any]) -> int:
    return sum(int(v) for v in stats.get("requests", {}).values())


def _served(stats: dict[str, Any]) -> int:
    return int(stats.get("statuses", {}).get("200", 0))


def _bytes(out: Path, prefix: str) -> int:
    return sum(p.stat().st_size for p in out.glob(prefix + "*") if p.is_file())


def _tenths(times: list[float], counts: list[int], n: int) -> list[float]:
    """Rows/s in each tenth of the rows, from (second, cumulative rows) points."""
    marks = []
    for k in range(11):
        goal = n * k / 10
        for i, c in enumerate(counts):
            if c >= goal:
                if i == 0 or counts[i] == counts[i - 1]:
                    marks.append(times[i])
                else:  # within the second the goal was crossed, linearly
                    frac = (goal - counts[i - 1]) / (counts[i] - counts[i - 1])
                    marks.append(times[i - 1] + frac * (times[i] - times[i - 1]))
                break
        else:
            marks.append(float("nan"))
    return [n / 10 / (b - a) if b > a else float("nan") for a, b in itertools.pairwise(marks)]


def committed_rates(out: Path, n: int) -> list[float]:
    db = sqlite3.connect(f"file:{out / 'checkpoint.sqlite'}?mode=ro", uri=True)
    try:
        points = db.execute("SELECT t, done FROM timeline WHERE run = 1 ORDER BY t").fetchall()
    finally:
        db.close()
    times, counts, total = [float(points[0][0]) - 1], [0], 0
    for t, done in points:
        total += int(done)
        times.append(float(t))
        counts.append(total)
    return _tenths(times, counts, n)


def watched_run(
    sim: Sim, spec: Path, out: Path, n: int, c: int, pin: list[str], extra: list[str]
) -> dict[str, Any]:
    load0 = _load()
    child = Child([*pin, *tool_argv("runner", spec, sim.base_url, c, out), *extra],
                  log=WORK / "logs" / f"growth-{n}", env=ENV)  # fmt: skip
    samples: list[tuple[float, float, int]] = []
    # The results writer runs beside the job in a child process: its RSS counts too.
    writer_peak = both_peak = 0.0
    # The WAL, and the part of the job's RSS that is SQLite's WAL index (checkpoint.sqlite-shm,
    # mapped by the writer too): it follows the WAL's largest size.
    wal_peak = shm_peak = 0.0
    wal = out / "checkpoint.sqlite-wal"
    export_at = exported_at = None
    final = out / "results.parquet"
    while child.poll() is None:
        t = time.monotonic() - child.started
        try:
            served = _served(sim.stats())
        except TimeoutError:  # a simulator busy past the timeout: keep the last count
            served = samples[-1][2] if samples else 0
        rss = _rss_mb(child.pid)
        samples.append((t, rss, served))
        kids = _children(child.pid)
        writer_peak = max([writer_peak, *(_hwm_mb(k) for k in kids)])
        both_peak = max(both_peak, rss + sum(_rss_mb(k) for k in kids))
        shm_peak = max(shm_peak, _wal_index_mb(child.pid))
        with contextlib.suppress(OSError):
            wal_peak = max(wal_peak, wal.stat().st_size / 1e6)
        # results.parquet follows the job, so what the job's end adds is the time from the
        # last answer to the file in place.
        if export_at is None and served >= n:
            export_at = t
        if exported_at is None and final.exists():
            exported_at = t
        time.sleep(0.2)
    done = child.result
    assert done is not None
    if done.rc != 0:
        raise SystemExit(f"the run failed (rc {done.rc}): {done.stderr[-2000:]}")
    rss_at = []
    for k in range(1, 11):
        at = next((s for s in samples if s[2] >= n * k / 10), samples[-1])
        rss_at.append(round(at[1], 1))
    during_run = [s[1] for s in samples if export_at is None or s[0] < export_at]
    during_export = [s[1] for s in samples if export_at is not None and s[0] >= export_at]
    ckpt = _bytes(out, "checkpoint.sqlite")
    db = sqlite3.connect(f"file:{out / 'checkpoint.sqlite'}?mode=ro", uri=True)
    try:
        answer = db.execute("SELECT AVG(LENGTH(response)) FROM rows").fetchone()[0]
    finally:
        db.close()
    rates = committed_rates(out, n)
    res = {
        "wall_s": round(done.wall_s, 1),
        "cpu_s": round(done.cpu_s, 1),
        "peak_rss_mb": round(done.maxrss_mb, 1),
        "peak_rss_run_mb": round(max(during_run, default=0), 1),
        "peak_rss_export_mb": round(max(during_export, default=0), 1),
        "peak_rss_writer_mb": round(writer_peak, 1),
        # Runner and writer at the same moment (sampled), and the sum of their own peaks (a
        # bound: the two need not peak together).
        "peak_rss_together_mb": round(both_peak, 1),
        "peak_rss_sum_mb": round(done.maxrss_mb + writer_peak, 1),
        "peak_rss_wal_index_mb": round(shm_peak, 2),
        "peak_wal_mb": round(wal_peak, 1),
        "rss_at_tenths_mb": rss_at,
        "rows_per_s_tenths": [round(r) for r in rates],
        "last_over_first": round(rates[-1] / rates[0], 3),
        "export_s": (
            round((exported_at or done.wall_s) - export_at, 1) if export_at is not None else None
        ),
        "checkpoint_bytes": ckpt,
        "checkpoint_bytes_per_row": round(ckpt / n),
        "response_bytes_per_row": round(answer or 0),
        "results_bytes_per_row": round(final.stat().st_size / n) if final.exists() else None,
        "load": [load0, _load()],
        # (seconds, RSS MB, rows answered) about once a second: the curve behind the tenths.
        "samples": [[round(t, 1), round(r, 1), k] for t, r, k in samples[::5]],
    }
    res["export_share"] = round(res["export_s"] / done.wall_s, 3) if res["export_s"] else None
    return res


def timed(argv: list[str], name: str) -> dict[str, Any]:
    load0 = _load()
    done = Child(argv, log=WORK / "logs" / f"growth-{name}", env=ENV).wait(3600)
    if done.rc != 0:
        print(f"  {name} failed (rc {done.rc}): {done.stderr[-500:]}", flush=True)
    return {"wall_s": round(done.wall_s, 2), "cpu_s": round(done.cpu_s, 2),
            "peak_rss_mb": round(done.maxrss_mb, 1), "rc": done.rc,
            "load": [load0, _load()]}  # fmt: skip


def readers(out: Path) -> dict[str, Any]:
    runner = [sys.executable, "-m", "runner"]
    res = {
        "status": timed([*runner, "status", str(out), "--json"], "status"),
        "export": timed([*runner, "export", str(out), "-o", str(out / "again.parquet")], "export"),
        "report": timed([*runner, "report", str(out), "-o", str(out / "report.html")], "report"),
    }
    (out / "again.parquet").unlink(missing_ok=True)
    return res


def resumes(sim: Sim, out: Path, n: int, pin: list[str]) -> dict[str, Any]:
    res = {}
    for frac in (0.9, 0.5, 0.1):
        db = sqlite3.connect(out / "checkpoint.sqlite")
        t0 = time.monotonic()
        with db:
            db.execute("DELETE FROM rows WHERE seq >= ?", [int(n * frac)])
        db.close()
        cut_s = time.monotonic() - t0
        base = _received(sim.stats())
        load0 = _load()
        argv = [*pin, sys.executable, "-m", "runner", "resume", str(out), "--no-progress"]
        child = Child(argv, log=WORK / "logs" / f"growth-resume-{frac}", env=ENV)
        first = cpu = None
        while child.poll() is None and time.monotonic() - child.started < 120:
            if _received(sim.stats()) > base:
                first = time.monotonic() - child.started
                cpu = process_cpu_s(child.pid)
                break
            time.sleep(0.01)
        child.signal(signal.SIGKILL)
        child.wait(60)
        res[f"{round(frac * 100)}%"] = {"first_request_s": first and round(first, 2),
                                        "cpu_s": cpu, "load": load0,
                                        "cut_s": round(cut_s, 1)}  # fmt: skip
        sim.drain()
    return res


def commit_curve(n: int, words: int) -> dict[str, Any]:
    """The checkpoint alone: n rows of realistic size in 512-row commits, timed."""
    sys.path.insert(0, str(ROOT))
    from runner.outcome import Outcome
    from runner.sim.content import words as sim_words
    from runner.store import Store

    folder = WORK / "jobs" / f"commits-{n}"
    shutil.rmtree(folder, ignore_errors=True)
    store = Store(folder / "checkpoint.sqlite")
    text = sim_words(b"growth", words)
    times: list[float] = []
    batch = 512
    t_all = time.perf_counter()
    for lo in range(0, n, batch):
        outcomes = []
        for seq in range(lo, min(lo + batch, n)):
            body = {
                "id": f"chatcmpl-{seq:012d}", "created": 1767225600, "model": "glm-4.5-air",
                "request_id": f"req-{seq:016x}",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": f"{seq} {text}"}}],
                "usage": {"prompt_tokens": 18, "completion_tokens": 300, "total_tokens": 318},
            }  # fmt: skip
            outcomes.append(Outcome(
                seq=seq, custom_id=f"r{seq}", line=seq + 1, endpoint="chat/completions",
                model="glm-4.5-air", status="succeeded", attempts=1, http_status=200,
                request_id=body["request_id"], request_fingerprint=f"{seq:064x}",
                response=json.dumps(body), prompt_tokens=18, completion_tokens=300,
                total_tokens=318, cost_nano=123_000, started_at=1767225600.0 + seq / 1e4,
                finished_at=1767225600.02 + seq / 1e4, latency_s=0.02, key_fp="0123456789abcdef",
            ))  # fmt: skip
        t0 = time.perf_counter()
        store.record(outcomes)
        times.append(time.perf_counter() - t0)
        if len(times) % 200 == 0:
            store.checkpoint_wal()
    total_s = time.perf_counter() - t_all
    store.close()
    per = max(len(times) // 10, 1)
    tenths = [statistics.median(times[k * per : (k + 1) * per]) * 1000 for k in range(10)]
    size = _bytes(folder, "checkpoint.sqlite")
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "batch": batch,
        "commit_ms_median_tenths": [round(x, 2) for x in tenths],
        "us_per_row_first_last": [
            round(tenths[0] * 1000 / batch, 1),
            round(tenths[-1] * 1000 / batch, 1),
        ],
        "checkpoint_bytes_per_row": round(size / n),
        "total_s": round(total_s, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--concurrency", type=int, default=2000)
    p.add_argument("--latency", type=float, default=0.02)
    p.add_argument("--answer-words", type=int, default=180)
    p.add_argument("--commits", action="store_true", help="Only the checkpoint's commit curve.")
    p.add_argument("--no-resume", action="store_true", help="Skip the resumes.")
    p.add_argument("--keep", action="store_true", help="Keep the job folder.")
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--keep-response", choices=["full", "answer"], default="full")
    args = p.parse_args()
    for sub in ("jobs", "logs"):
        (WORK / sub).mkdir(parents=True, exist_ok=True)
    n, c = args.rows, args.concurrency
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data: dict[str, Any] = {"rows": n, "concurrency": c, "latency": args.latency,
                            "answer_words": args.answer_words, "argv": sys.argv[1:],
                            "keep_response": args.keep_response}  # fmt: skip
    if args.commits:
        data["commits"] = commit_curve(n, args.answer_words)
        print(json.dumps(data["commits"]), flush=True)
    else:
        compile_runner()
        spec = write_spec(WORK / f"spec-growth-{n}.jsonl", n, "growth", max_tokens=1024)
        # As a spec written before its job starts: one written in the last two seconds is
        # read again at every start to check it (spec.reader._settled).
        os.utime(spec, (time.time() - 60, time.time() - 60))
        out = WORK / "jobs" / f"growth-{n}-{stamp}"
        pin = _pin(0, args.no_pin)
        logs = WORK / "logs" / f"sim-growth-{n}"
        with Sim(args.latency, c, log=logs, ledger_ids=False, no_pin=args.no_pin) as sim:
            sim.configure(answer_words=args.answer_words)
            extra = ["--keep-response", args.keep_response]
            data["run"] = run = watched_run(sim, spec, out, n, c, pin, extra)
            print(f"run: {json.dumps({k: v for k, v in run.items() if k != 'samples'})}",
                  flush=True)  # fmt: skip
            data["readers"] = readers(out)
            print(f"readers: {json.dumps(data['readers'])}", flush=True)
            if not args.no_resume:
                data["resume"] = resumes(sim, out, n, pin)
                print(f"resume: {json.dumps(data['resume'])}", flush=True)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    path = WORK / f"growth-{n}-{stamp}.json"
    path.write_text(json.dumps(data, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
