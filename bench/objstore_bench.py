"""Issue 26: a spec in a bucket against the same spec on local disk, and a resume from a bucket.

An S3-compatible server (moto in server mode) and the simulator run on loopback as their own
processes. The same N-row JSONL spec is run from local disk and from ``s3://bench/spec.jsonl``
(with ``--results-to s3://bench/out/``, so the bucket run also uploads results.parquet),
alternating, ``--runs`` times each; for each run the child's peak RSS (``VmHWM``, polled every
20 ms) and wall time. Then the bucket job is SIGKILLed at three quarters and resumed twice from
copies of the killed folder: once as it is (the count's marks let the reader seek), once with
the marks removed (the reader splits every done line from byte 0); for each, the time from the
resume's start to its first request the simulator sees. The spec's ranged GETs (at most
1 MiB each) are counted from the S3 server's request log. Prints medians and ratios.

    python bench/objstore_bench.py [--rows 200000] [--runs 3] [--concurrency 500]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import API_KEY, WORK, Child, Sim, compile_runner, write_spec

BUCKET = "bench"
# Credentials of the loopback server only: moto takes any.
S3_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
S3_ENV["AWS_DEFAULT_REGION"] = "us-east-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _helper(code: str, env: dict[str, str]) -> str:
    """Run Python in a short-lived helper (pyarrow stays out of this process)."""
    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True,
        text=True, check=False, cwd=WORK,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"helper failed: {done.stderr[-2000:]}")
    return done.stdout


def _gets(log: Path) -> int:
    """GET requests for the spec object so far, from the S3 server's request log."""
    with log.open("rb") as f:
        return sum(1 for line in f if b"GET /" + BUCKET.encode() + b"/spec.jsonl" in line)


def _requests(sim: Sim) -> int:
    return sum(int(v) for v in sim.stats().get("requests", {}).values())


def _succeeded(out: Path) -> int:
    try:
        db = sqlite3.connect(f"{(out / 'checkpoint.sqlite').as_uri()}?mode=ro", uri=True)
        try:
            return int(
                db.execute("SELECT count(*) FROM rows WHERE status='succeeded'").fetchone()[0]
            )
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def run_once(argv: list[str], env: dict[str, str], log: Path, timeout: float) -> dict[str, Any]:
    child = Child(argv, log=log, env=env)
    done = child.wait(timeout)
    if done.rc != 0:
        raise SystemExit(f"runner exited {done.rc}: {done.stderr[-2000:]}")
    return {"wall_s": done.wall_s, "rss_mb": done.maxrss_mb, "cpu_s": done.cpu_s}


def first_request_after(argv: list[str], env: dict[str, str], sim: Sim, log: Path) -> float:
    """Seconds from the resume's start to the first request the simulator sees."""
    before = _requests(sim)
    child = Child(argv, log=log, env=env)
    took = float("nan")
    while child.poll() is None:
        if _requests(sim) > before:
            took = time.monotonic() - child.started
            break
        time.sleep(0.01)
    child.signal(signal.SIGKILL)
    child.wait(30)
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=500)
    p.add_argument("--latency", type=float, default=0.05)
    p.add_argument("--resumes", type=int, default=3, help="resumes timed per variant")
    args = p.parse_args()
    compile_runner()
    logs = WORK / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    spec = write_spec(WORK / f"spec-objstore-{args.rows}.jsonl", args.rows, "objstore")
    size_mb = spec.stat().st_size / 1e6
    port = _free_port()
    s3 = {**S3_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    moto = Child(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        log=logs / "moto",
    )
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        url = f"s3://{BUCKET}/spec.jsonl"
        _helper(
            "import boto3\n"
            f"boto3.client('s3').create_bucket(Bucket={BUCKET!r})\n"
            "from runner import storage\n"
            f"storage.upload(__import__('pathlib').Path({str(spec)!r}), {url!r})",
            s3,
        )
        env = {"ZAI_API_KEY": API_KEY, **s3}
        figures: dict[str, list[dict[str, Any]]] = {"local": [], "s3": []}
        limit = 120 + 20 * args.rows / args.concurrency * args.latency
        with Sim(args.latency, args.concurrency, log=logs / "sim-objstore", ledger_ids=False,
                 no_pin=True) as sim:  # fmt: skip
            for k in range(args.runs):
                for where in ("local", "s3"):
                    out = WORK / "jobs" / f"objstore-{where}-{k}"
                    shutil.rmtree(out, ignore_errors=True)
                    source = str(spec) if where == "local" else url
                    argv = [
                        sys.executable, "-m", "runner", "run", source, "--out", str(out),
                        "--base-url", sim.base_url, "--concurrency", str(args.concurrency),
                        "--no-progress",
                    ]  # fmt: skip
                    if where == "s3":
                        argv += ["--results-to", f"s3://{BUCKET}/out-{k}/"]
                    gets = _gets(moto.err_path)
                    fig = run_once(argv, env, logs / f"objstore-{where}-{k}", limit)
                    fig["gets"] = _gets(moto.err_path) - gets
                    figures[where].append(fig)
                    print(
                        f"run {k} {where}: {fig['wall_s']:.1f} s, peak RSS {fig['rss_mb']:.0f} MB"
                    )
            resume = _kill_and_resume(args, url, env, sim, logs, moto.err_path)
    finally:
        moto.signal(signal.SIGKILL)
        moto.wait(10)
    _report(args, size_mb, figures, resume)


def _kill_and_resume(
    args: argparse.Namespace, url: str, env: dict[str, str], sim: Sim, logs: Path, s3_log: Path
) -> dict[str, Any]:
    out = WORK / "jobs" / "objstore-kill"
    shutil.rmtree(out, ignore_errors=True)
    argv = [
        sys.executable, "-m", "runner", "run", url, "--out", str(out), "--base-url",
        sim.base_url, "--concurrency", str(args.concurrency), "--no-progress",
    ]  # fmt: skip
    child = Child(argv, log=logs / "objstore-kill", env=env)
    while child.poll() is None and _succeeded(out) < args.rows * 3 // 4:
        time.sleep(0.05)
    child.signal(signal.SIGKILL)
    child.wait(30)
    done = _succeeded(out)
    marks = (out / "spec.marks").read_text().split()
    pending = _first_pending(out)
    start = 0
    for k in range(1, len(marks) - 2, 3):
        if int(marks[k]) <= pending:
            start = int(marks[k + 1])
    times: dict[str, list[float]] = {"marks": [], "from byte 0": []}
    gets: dict[str, list[int]] = {"marks": [], "from byte 0": []}
    for k in range(args.resumes):
        for variant in times:
            copy = WORK / "jobs" / f"objstore-resume-{k}-{variant.replace(' ', '')}"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(out, copy)
            if variant != "marks":
                (copy / "spec.marks").unlink()
            again = [sys.executable, "-m", "runner", "resume", str(copy), "--no-progress"]
            before = _gets(s3_log)
            times[variant].append(first_request_after(again, env, sim, logs / f"res-{k}"))
            gets[variant].append(_gets(s3_log) - before)
    return {
        "done": done, "pending": pending, "skipped_bytes": start, "times": times, "gets": gets,
    }  # fmt: skip


def _first_pending(out: Path) -> int:
    """The first seq without a final result: where a resume's reading must begin."""
    db = sqlite3.connect(out / "checkpoint.sqlite")
    try:
        done = db.execute(
            "SELECT seq FROM rows WHERE status IN ('succeeded', 'failed') ORDER BY seq"
        )
        for i, (seq,) in enumerate(done):
            if seq != i:
                return i
        return int(db.execute("SELECT count(*) FROM rows").fetchone()[0])
    finally:
        db.close()


def _report(
    args: argparse.Namespace,
    size_mb: float,
    figures: dict[str, list[dict[str, Any]]],
    resume: dict[str, Any],
) -> None:
    med = {w: {k: statistics.median(f[k] for f in fs) for k in fs[0]} for w, fs in figures.items()}
    print()
    print(
        f"{args.rows:,} rows ({size_mb:.0f} MB), C={args.concurrency}, L={args.latency} s, "
        f"{args.runs} runs each (medians)"
    )
    print("| spec | wall s | CPU s | peak RSS MB | every run's peak RSS MB | spec GETs |")
    print("|---|---|---|---|---|---|")
    for where, label in (("local", "local file"), ("s3", "s3:// (moto), --results-to s3://")):
        runs = ", ".join(f"{f['rss_mb']:.0f}" for f in figures[where])
        m = med[where]
        gets = f"{m['gets']:.0f}" if where == "s3" else "-"
        print(
            f"| {label} | {m['wall_s']:.1f} | {m['cpu_s']:.1f} | {m['rss_mb']:.0f} | {runs} "
            f"| {gets} |"
        )
    print(
        f"ratio s3 / local: peak RSS {med['s3']['rss_mb'] / med['local']['rss_mb']:.2f}, "
        f"wall {med['s3']['wall_s'] / med['local']['wall_s']:.2f}"
    )
    t = resume["times"]
    print()
    print(
        f"kill -9 at {resume['done']:,} rows done; first pending row {resume['pending']:,}; "
        f"the marks skip {resume['skipped_bytes'] / 1e6:.1f} MB of {size_mb:.0f} MB"
    )
    print(
        "| resume of the bucket job | to first request, s (median) | every resume "
        "| spec GETs before it (median) |"
    )
    print("|---|---|---|---|")
    for variant, values in t.items():
        every = ", ".join(f"{v:.2f}" for v in values)
        gets = statistics.median(resume["gets"][variant])
        print(f"| {variant} | {statistics.median(values):.2f} | {every} | {gets:.0f} |")


if __name__ == "__main__":
    main()
