"""What a served live page costs a running job: its rate with the page open and without.

Runs the same job on a simulator process several times, alternating: without a page, and
with `runner run --serve` and a reader that does what an open browser tab does (the page
once, then live.json every `--every` seconds, and the page again every minute; here
`--every 1` by default, five times the real page's pace, to make any cost show). The rate
is the job's rows over the time from its first send to its last answer, from the
checkpoint. Then, on a big checkpoint if one is given, the cost of one read of each half
of the page (the live figures, and the full report the page rebuilds rarely).

    python bench/live_page.py [--rows 10000] [--repeats 2] [--big OUT_OF_A_BIG_JOB]
"""

from __future__ import annotations

import argparse
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]


def write_spec(path: Path, n: int) -> Path:
    with path.open("wb") as f:
        for i in range(n):
            body = {"model": "glm-4.5-air", "messages": [{"role": "user", "content": f"q{i}"}]}
            f.write(orjson.dumps({"custom_id": f"r{i}", "body": body}) + b"\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rate(out: Path) -> float:
    conn = sqlite3.connect(f"file:{out / 'checkpoint.sqlite'}?mode=ro", uri=True)
    try:
        n, t0, t1 = conn.execute(
            "SELECT COUNT(*), MIN(started_at), MAX(finished_at) FROM rows"
        ).fetchone()
    finally:
        conn.close()
    return float(n) / (t1 - t0)


def reader(url: str, every: float, stop: threading.Event, counts: list[int]) -> None:
    """An open tab: the page, live.json every `every` s, the page again each minute."""
    last_page = 0.0
    while not stop.is_set():
        try:
            if time.monotonic() - last_page >= 60:
                urllib.request.urlopen(url, timeout=30).read()
                last_page = time.monotonic()
                counts[0] += 1
            urllib.request.urlopen(url + "live.json", timeout=30).read()
            counts[1] += 1
        except OSError:
            pass  # the page is not up yet
        stop.wait(every)


def one_job(spec: Path, out: Path, base_url: str, args: argparse.Namespace, page: bool) -> float:
    cmd = [
        *(sys.executable, "-m", "runner", "run", str(spec), "--out", str(out)),
        *("--base-url", base_url, "--concurrency", str(args.concurrency), "--no-progress"),
    ]
    stop, counts, thread = threading.Event(), [0, 0], None
    if page:
        port = free_port()
        cmd += ["--serve", str(port)]
        thread = threading.Thread(
            target=reader, args=(f"http://127.0.0.1:{port}/", args.every, stop, counts)
        )
        thread.start()
    env = {**os.environ, "ZAI_API_KEY": "bench-key"}
    subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True)
    stop.set()
    if thread is not None:
        thread.join()
        print(f"    (the reader fetched the page {counts[0]}x, live.json {counts[1]}x)")
    return rate(out)


def time_reads(out: Path) -> None:
    from runner.report.data import load_report
    from runner.report.live import live_figures

    checkpoint = out / "checkpoint.sqlite"
    t = time.perf_counter()
    report = load_report(checkpoint)
    full = time.perf_counter() - t
    reads = []
    for _ in range(5):
        t = time.perf_counter()
        live_figures(checkpoint, report)
        reads.append(time.perf_counter() - t)
    rows = report["summary"]["total"]
    print(
        f"{rows:,} rows: live figures {statistics.median(reads) * 1000:.0f} ms (median of 5); "
        f"full report {full:.1f} s, rebuilt at most every {max(10, 20 * full):.0f} s while "
        "a page is open"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--every", type=float, default=1.0, help="seconds between live.json reads")
    ap.add_argument("--big", type=Path, help="the --out folder of a big job, to time its reads")
    args = ap.parse_args()
    sim = subprocess.Popen(
        [sys.executable, "-m", "runner.sim", "--port", "0", "--latency", str(args.latency),
         "--no-ledger-ids"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
    )  # fmt: skip
    assert sim.stdout is not None
    base_url = sim.stdout.readline().strip()
    rates: dict[bool, list[float]] = {False: [], True: []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            spec = write_spec(Path(tmp) / "spec.jsonl", args.rows)
            for i in range(args.repeats):
                for page in (False, True):
                    out = Path(tmp) / f"out-{i}-{int(page)}"
                    r = one_job(spec, out, base_url, args, page)
                    rates[page].append(r)
                    print(f"  {'with' if page else 'without'} the page: {r:,.0f} rows/s")
    finally:
        sim.terminate()
        sim.wait()
    without, with_page = statistics.median(rates[False]), statistics.median(rates[True])
    ideal = args.concurrency / args.latency
    print(
        f"{args.rows:,} rows, C={args.concurrency}, L={args.latency} s (ideal {ideal:,.0f} "
        f"rows/s): median {without:,.0f} rows/s without the page, {with_page:,.0f} with it "
        f"(ratio {with_page / without:.3f})"
    )
    if args.big:
        time_reads(args.big)


if __name__ == "__main__":
    main()
