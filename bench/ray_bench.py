"""`--engine ray` against the single process, on the simulator (docs/BENCHMARKS.md).

One simulator serves both; each engine runs the same job in a fresh folder, then runs it
again (which must send nothing). The job has a pool of --keys K fake keys and its rows go
over the first --models M of harness.MODELS in turn; the simulator gives each key the real
limit --concurrency C, which it applies per (key, model) as the platform's tier does, and
the runner is told C per key (per model), so K x M x C may be in flight in all. The
simulator's counters are reset before each engine. A sampler reads its in-flight count
every 50 ms: the table gives the median and 10th percentile over the steady part of the run
(from the first answer until 95 % of the rows are answered), to compare with K x M x C;
the simulator's peak per (key, model) (one number when all K x M are equal, else
min..max; each pair's peak is listed below the table when K x M > 1), and its 429s. Rates
are answers per second over that window, and of ideal = rate / (K x M x C / latency), i.e.
ideal wall = rows / (K x M x C) x latency. --no-ray runs only the single process.

    python bench/ray_bench.py --rows 4000 --concurrency 40 --latency 0.2 --shards 4
    python bench/ray_bench.py --rows 40000 --concurrency 2000 --latency 1 --shards 2
    python bench/ray_bench.py --rows 4000 --keys 2 --models 2 --concurrency 20 --shards 2
    # 4 keys x 4 models x 500 = 8,000 in flight, L = 2 s (ideal 4,000 rows/s, 20 s):
    python bench/ray_bench.py --rows 80000 --keys 4 --models 4 --concurrency 500 \\
        --latency 2 --shards 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
from harness import MODELS, SERVERS
from key_pool import key_id


def _keys(n: int) -> list[str]:
    """n fake keys, not secrets: the simulator accepts only these."""
    return [f"bench-key-{i}.NOTASECRET" for i in range(1, n + 1)]


def _stats(root: str) -> dict[str, Any]:
    with urllib.request.urlopen(root + "/_sim/stats", timeout=10) as r:
        return dict(json.loads(r.read()))


def _reset(root: str) -> None:
    """Zero the simulator's counters (peaks included), so each engine's are its own."""
    req = urllib.request.Request(root + "/_sim/reset", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()


def _spec(path: Path, rows: int, models: int) -> None:
    with path.open("wb") as f:
        for i in range(rows):
            body = {
                "model": MODELS[i % models],
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


def _cap(args: argparse.Namespace) -> int:
    """What may be in flight in all: each (key, model) holds --concurrency."""
    return int(args.keys * args.models * args.concurrency)


def _one(args: argparse.Namespace, root: str, base: str, spec: Path, engine: str) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix=f"ray-bench-{engine}-"))
    cmd = [sys.executable, "-m", "runner", "run", str(spec), "--out", str(out / "job")]
    cmd += ["--base-url", base, "--concurrency", str(args.concurrency), "--no-progress"]
    if engine == "ray":
        cmd += ["--engine", "ray", "--shards", str(args.shards)]
    keys = _keys(args.keys)
    env = {**os.environ, "ZAI_API_KEY": ",".join(keys)}
    _reset(root)
    before = _stats(root)
    sent0 = before["requests"].get("chat/completions", 0)
    ok0 = before["statuses"].get("200", 0)
    samples: list[tuple[float, int, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                s = _stats(root)
            except OSError:  # a slow answer under load: skip this sample, not the rest
                pass
            else:
                done = s["statuses"].get("200", 0) - ok0
                samples.append((time.monotonic(), s["in_flight"], done))
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
    end = samples[-1][0] if samples else start + wall
    last = next((t for t, _, done in samples if done >= 0.95 * args.rows), end)
    steady = [n for t, n, _ in samples if first <= t <= last] or [0]
    answered = 0.95 * args.rows
    rate = answered / max(1e-9, last - first)
    # Every (key, model) the job should fill, 0 where the simulator saw none of it.
    seen = after.get("peak_concurrency", {})
    peaks = {
        (k, m): seen.get(key_id(key), {}).get(MODELS[m], 0)
        for k, key in enumerate(keys)
        for m in range(args.models)
    }
    low, high = min(peaks.values()), max(peaks.values())
    import pyarrow.parquet as pq

    ids = pq.read_table(out / "job" / "results.parquet", columns=["custom_id"]).column(0)
    return {
        "engine": engine if engine != "ray" else f"ray x{args.shards}",
        "exit": proc.returncode,
        "rerun_exit": again.returncode,
        "wall_s": round(wall, 2),
        "rate": round(rate, 1),
        "of_ideal": round(rate / (_cap(args) / args.latency), 3),
        "inflight_median": statistics.median(steady),
        "inflight_p10": sorted(steady)[len(steady) // 10],
        "peak": high if low == high else f"{low}..{high}",
        "peaks": peaks,
        "sent": after["requests"].get("chat/completions", 0) - sent0,
        "429s": after["statuses"].get("429", 0) - before["statuses"].get("429", 0),
        "rerun_sent": rerun_sent,
        "distinct_rows": len(set(ids.to_pylist())),
        "cores_busy": round((b1 - b0) / max(1.0, t1 - t0) * (os.cpu_count() or 1), 2),
        "tail": proc.stderr[-400:] if proc.returncode else "",
    }


def _raise_fd_limit() -> None:
    """K x M x C connections at once (and the children inherit it): up to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=40, help="limit per (key, model)")
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--keys", type=int, default=1, help="keys in the pool (fake ones)")
    ap.add_argument("--models", type=int, default=1, help=f"1 to {len(MODELS)} models")
    ap.add_argument("--engines", default="local,ray")
    ap.add_argument("--no-ray", action="store_true", help="only the single process")
    ap.add_argument(
        "--server",
        choices=sorted(SERVERS),
        default="sim",
        help="the runner's simulator, or bench/standin.py (far less CPU per request: at "
        "thousands of rows a second the simulator takes most of a core of its own)",
    )
    args = ap.parse_args()
    if not 1 <= args.models <= len(MODELS):
        ap.error(f"--models must be 1 to {len(MODELS)}")
    if args.keys < 1:
        ap.error("--keys must be at least 1")
    engines = [e for e in args.engines.split(",") if not (args.no_ray and e == "ray")]
    if not engines:
        ap.error("no engine left to run")
    _raise_fd_limit()
    keys = _keys(args.keys)
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.jsonl"
        _spec(spec, args.rows, args.models)
        argv = [sys.executable, *SERVERS[args.server], "--port", "0", "--no-ledger-ids",
                "--concurrency", str(args.concurrency), "--latency", str(args.latency)]  # fmt: skip
        if args.server == "sim":
            for key in keys:  # the simulator applies a key's limit to each model apart
                argv += ["--api-key", f"{key}:{args.concurrency}"]
        # (the stand-in limits every (key, model) to --concurrency, whatever the key)
        sim = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert sim.stdout is not None
            base = sim.stdout.readline().strip()
            root = base.split("/api/")[0]
            rows = [_one(args, root, base, spec, e) for e in engines]
        finally:
            sim.terminate()
            sim.wait()
    cap, many = _cap(args), args.keys * args.models > 1
    pool = f", {args.keys} keys x {args.models} models" if many else ""
    limit = f"{args.concurrency} per (key, model), {cap} in all" if many else f"{cap}"
    print(
        f"rows {args.rows}{pool}, limit and --concurrency {limit}, latency "
        f"{args.latency} s, ideal {cap / args.latency:.0f} rows/s"
    )
    cols = ["engine", "exit", "wall_s", "rate", "of_ideal", "inflight_median", "inflight_p10"]
    cols += ["peak", "sent", "429s", "distinct_rows", "rerun_sent", "cores_busy"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
        if r["tail"]:
            print(r["tail"], file=sys.stderr)
    if many:
        print(f"\npeak per (key, model), limit {args.concurrency} each:")
        pairs = [f"k{k + 1}/{MODELS[m]}" for k in range(args.keys) for m in range(args.models)]
        print("| engine | " + " | ".join(pairs) + " |")
        print("|" + "---|" * (len(pairs) + 1))
        for r in rows:
            print(f"| {r['engine']} | " + " | ".join(str(v) for v in r["peaks"].values()) + " |")


if __name__ == "__main__":
    main()
