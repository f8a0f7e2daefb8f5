"""What the per-second timeline (runner/timeline.py) costs the runner, part by part.

The timeline adds nothing per request: a sampler reads the pool's counters four times a
second and commits one row a second under the writer's lock. This prints the CPU of each
part, and what it comes to per row at a given rate (the runner's own cost is ~110 µs/row):

    python bench/timeline_cost.py            # per row at 1,000 rows/s (C = 500, L = 0.5 s)
    python bench/timeline_cost.py --rate 100
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

import anyio

from runner.progress import Counters
from runner.report.timeline import SAMPLES_PER_SECOND, Recorder, ensure_table, write_rows


def per_call(fn: object, n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        fn()  # type: ignore[operator]
    return (time.process_time() - start) / n


async def loop_costs(n: int) -> tuple[float, float]:
    """CPU of one wake-up from anyio.sleep, and of one hop to a worker thread and back."""
    await anyio.to_thread.run_sync(lambda: None)
    start = time.process_time()
    for _ in range(n):
        await anyio.sleep(0.0005)
    sleep = (time.process_time() - start) / n
    start = time.process_time()
    for _ in range(n // 5):
        await anyio.to_thread.run_sync(lambda: None)
    return sleep, (time.process_time() - start) / (n // 5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=1000.0, help="rows per second")
    args = ap.parse_args()
    counters = Counters(cap=500)
    rec = Recorder(counters, run=1)
    clock = iter(range(10**9))

    def sample() -> None:
        counters.sent += 1
        rec.sample(1e9 + next(clock) / SAMPLES_PER_SECOND)

    sample_s = per_call(sample, 200_000)
    rows = rec.take()
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(Path(tmp) / "c.sqlite")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        ensure_table(conn)
        it = iter(rows)
        commit_s = per_call(lambda: write_rows(conn, [next(it)]), 5_000)
        conn.close()
    try:
        import uvloop  # noqa: F401

        options = {"use_uvloop": True}
    except ImportError:
        options = {}
    sleep_s, hop_s = anyio.run(loop_costs, 5_000, backend="asyncio", backend_options=options)
    second = SAMPLES_PER_SECOND * (sample_s + sleep_s) + hop_s + commit_s
    print(
        f"sample (read counters, close a second): {sample_s * 1e6:6.2f} µs  x{SAMPLES_PER_SECOND}/s"
    )
    print(
        f"wake-up from anyio.sleep:               {sleep_s * 1e6:6.2f} µs  x{SAMPLES_PER_SECOND}/s"
    )
    print(f"hop to the writer's thread:             {hop_s * 1e6:6.2f} µs  x1/s")
    print(f"commit of one timeline row (WAL):       {commit_s * 1e6:6.2f} µs  x1/s")
    print(f"in all: {second * 1e6:.0f} µs of CPU per second of job")
    print(f"        {second / args.rate * 1e6:.2f} µs per row at {args.rate:,.0f} rows/s")


if __name__ == "__main__":
    main()
