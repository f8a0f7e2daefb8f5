"""A pool of keys: what share of the ideal (the sum of the keys' limits) one job reaches.

Four keys with real limits of 60, 40, 30 and 20 in flight (the simulator's per-key tiers)
serve one job of N rows at latency L. The ideal is N / (sum of limits) x L. Two ways to tell
the runner about them:

- ``told``: a keys file gives each key its real concurrency;
- ``over``: ``--concurrency 100`` for every key, so each key's adaptive limiter must find
  its own limit under 1302s without slowing the others.

Wall is the simulator's window (first request received to last finished, harness.py), so
start-up is not counted. Per key it also prints the share of rows each key answered, against
its share of the total limit (what a pool that keeps every key busy gives).

    python bench/key_pool.py                 # N = 12,000, L = 0.2 s
    python bench/key_pool.py --rows 3000 --repeat 1
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness import WORK, Child, Sim, write_spec

LIMITS = (60, 40, 30, 20)
KEYS = tuple(f"bench-pool-key-{n}.{'s' * 24}{n:04d}" for n in range(1, len(LIMITS) + 1))


def key_id(key: str) -> str:
    """The simulator's name for a key in /_sim/stats."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass
class PoolRun:
    mode: str
    wall_s: float
    of_ideal: float
    shares: list[float]  # each key's share of the rows billed
    refused_1302: int
    cpu_us: float


def one_run(mode: str, n: int, latency: float, spec: Path, tag: str) -> PoolRun:
    log = WORK / f"keypool-{tag}"
    sim = Sim(latency, 10_000, log=log.with_name(log.name + "-sim"), ledger_ids=False, no_pin=True)
    for key, limit in zip(KEYS, LIMITS, strict=True):
        sim.argv += ["--api-key", f"{key}:{limit}"]
    out = WORK / f"keypool-{tag}-out"
    if out.exists():
        shutil.rmtree(out)
    env = {"ZAI_API_KEY": ",".join(KEYS)}
    extra = ["--concurrency", "100"]
    if mode == "told":
        keys_file = WORK / f"keypool-{tag}.toml"
        keys_file.write_text(
            "".join(
                f'[[keys]]\nenv = "BENCH_POOL_{i}"\nconcurrency = {limit}\n'
                for i, limit in enumerate(LIMITS)
            )
        )
        env = {f"BENCH_POOL_{i}": key for i, key in enumerate(KEYS)}
        extra = ["--keys", str(keys_file)]
    with sim:
        argv = [
            sys.executable, "-m", "runner", "run", str(spec), "--out", str(out),
            "--base-url", sim.base_url, "--no-progress", *extra,
        ]  # fmt: skip
        child = Child(argv, log=log, env=env)
        done = child.wait(600)
        stats = sim.stats()
    if done.rc != 0:
        raise SystemExit(f"{mode}: the runner exited {done.rc}: {done.stderr[-2000:]}")
    bench = stats.get("bench") or {}
    wall = float(bench["last_finished"]) - float(bench["first_received"])
    ideal = n / sum(LIMITS) * latency
    by_key = stats["by_key"]
    total = sum(int(by_key[key_id(k)]["billed"]) for k in KEYS)
    shares = [int(by_key[key_id(k)]["billed"]) / total for k in KEYS]
    refused = sum(int(by_key[key_id(k)].get("1302", 0)) for k in KEYS)
    return PoolRun(mode, wall, ideal / wall, shares, refused, done.cpu_s / n * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=12_000)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    spec = write_spec(WORK / f"keypool-{args.rows}.jsonl", args.rows, "keypool")
    ideal = args.rows / sum(LIMITS) * args.latency
    print(
        f"pool of {len(LIMITS)} keys, limits {'/'.join(map(str, LIMITS))} (sum {sum(LIMITS)}), "
        f"N={args.rows:,}, L={args.latency} s: ideal {ideal:.1f} s"
    )
    want = [limit / sum(LIMITS) for limit in LIMITS]
    print(f"  each key's share of the limits: {' '.join(f'{w:.2f}' for w in want)}")
    results = []
    for mode in ("told", "over"):
        runs = []
        for r in range(args.repeat):
            runs.append(one_run(mode, args.rows, args.latency, spec, f"{mode}-{r}"))
            time.sleep(0.5)
        mid = sorted(runs, key=lambda x: x.of_ideal)[len(runs) // 2]
        results.append(mid)
        every = ", ".join(f"{x.of_ideal:.2f}" for x in runs)
        cpu = statistics.fmean(x.cpu_us for x in runs)
        print(
            f"  {mode:>4}: {mid.of_ideal:.2f} of ideal (median of {len(runs)}: {every}), "
            f"wall {mid.wall_s:.1f} s, rows per key {' '.join(f'{s:.2f}' for s in mid.shares)}, "
            f"1302s {mid.refused_1302}, {cpu:.0f} µs CPU/row"
        )
    out = WORK / "keypool.json"
    out.write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
