"""`--engine ray` against the single process, on the simulator (docs/BENCHMARKS.md).

One simulator (real limit = --concurrency) serves both; each engine runs the same job in a
fresh folder, then runs it again (which must send nothing). A sampler reads the
simulator's in-flight count every 50 ms: the table gives its median and 10th percentile
over the steady part of the run (from the first answer until 95 % of the rows are
answered), the simulator's peak per key and model, and its 429s. Rates are answers per
second over that window, and of ideal = rate / (concurrency / latency).

    python bench/ray_bench.py --rows 4000 --concurrency 40 --latency 0.2 --shards 4
    python bench/ray_bench.py --rows 40000 --concurrency 2000 --latency 1 --shards 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

KEY = "bench-key.NOTASECRET"


def _stats(root: str) -> dict[str, Any]:
    with urllib.request.urlopen(root + "/_sim/stats", timeout=10) as r:
        return dict(json.loads(r.read()))


def _spec(path: Path, rows: int) -> None:
    with path.open("wb") as f:
        for i in range(rows):
            body = {
                "model": "glm-4.5-air",
                "messages": [{"role": "user", "content": f"question {i}"}],
                "max_tokens": 16,
            }
            f.write(orjson.dumps({"custom_id": f"row-{i}", "body": body}) + b"\n")


def _busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, to report the cores in use."""
    with open("/proc/stat") as f:
        parts = [float(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts) - idle, sum(parts)


def _one(args: argparse.Namespace, root: str, base: str, spec: Path, engine: str) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix=f"ray-bench-{engine}-"))
    cmd = [sys.executable, "-m", "runner", "run", str(spec), "--out", str(out / "job")]
    cmd += ["--base-url", base, "--concurrency", str(args.concurrency), "--no-progress"]
    if engine == "ray":
        cmd += ["--engine", "ray", "--shards", str(args.shards)]
    env = {**os.environ, "ZAI_API_KEY": KEY}
    before = _stats(root)
    sent0 = before["requests"].get("chat/completions", 0)
    ok0 = before["statuses"].get("200", 0)
    samples: list[tuple[float, int, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            s = _stats(root)
            samples.append((time.monotonic(), s["in_flight"], s["statuses"].get("200", 0) - ok0))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    b0, t0 = _busy()
    start = time.monotonic()
    sampler.start()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    stop.set()
    sampler.join()
    b1, t1 = _busy()
    after = _stats(root)
    again = subprocess.run(cmd, env=env, capture_output=True, text=True)
    rerun_sent = _stats(root)["requests"].get("chat/completions", 0) - after["requests"].get(
        "chat/completions", 0
    )
    first = next((t for t, _, done in samples if done > 0), start)
    last = next((t for t, _, done in samples if done >= 0.95 * args.rows), samples[-1][0])
    steady = [n for t, n, _ in samples if first <= t <= last] or [0]
    answered = 0.95 * args.rows
    rate = answered / max(1e-9, last - first)
    peaks = after.get("peak_concurrency", {})
    import pyarrow.parquet as pq

    ids = pq.read_table(out / "job" / "results.parquet", columns=["custom_id"]).column(0)
    return {
        "engine": engine if engine != "ray" else f"ray x{args.shards}",
        "exit": proc.returncode,
        "rerun_exit": again.returncode,
        "wall_s": round(wall, 2),
        "rate": round(rate, 1),
        "of_ideal": round(rate / (args.concurrency / args.latency), 3),
        "inflight_median": statistics.median(steady),
        "inflight_p10": sorted(steady)[len(steady) // 10],
        "peak": max((v for m in peaks.values() for v in m.values()), default=0),
        "sent": after["requests"].get("chat/completions", 0) - sent0,
        "429s": after["statuses"].get("429", 0) - before["statuses"].get("429", 0),
        "rerun_sent": rerun_sent,
        "distinct_rows": len(set(ids.to_pylist())),
        "cores_busy": round((b1 - b0) / max(1.0, t1 - t0) * (os.cpu_count() or 1), 2),
        "tail": proc.stderr[-400:] if proc.returncode else "",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=40)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--engines", default="local,ray")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.jsonl"
        _spec(spec, args.rows)
        sim = subprocess.Popen(
            [sys.executable, "-m", "runner.sim", "--port", "0", "--no-ledger-ids",
             "--concurrency", str(args.concurrency), "--latency", str(args.latency)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            assert sim.stdout is not None
            base = sim.stdout.readline().strip()
            root = base.split("/api/")[0]
            rows = [_one(args, root, base, spec, e) for e in args.engines.split(",")]
        finally:
            sim.terminate()
            sim.wait()
    print(
        f"rows {args.rows}, limit and --concurrency {args.concurrency}, latency "
        f"{args.latency} s, ideal {args.concurrency / args.latency:.0f} rows/s"
    )
    cols = ["engine", "exit", "wall_s", "rate", "of_ideal", "inflight_median", "inflight_p10"]
    cols += ["peak", "sent", "429s", "distinct_rows", "rerun_sent", "cores_busy"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
        if r["tail"]:
            print(r["tail"], file=sys.stderr)


if __name__ == "__main__":
    main()
