"""The kill -9 window: how many answered rows a SIGKILL costs, against what was in flight.

A synchronous answer the platform sent but the checkpoint had not committed when the
process died is paid again on resume. The runner's promise (docs/RELIABILITY.md) is that
this stays within the requests in flight at the kill plus 200: the writer commits on a
short clock, so the answered-but-uncommitted backlog is small at any rate.

One job of N rows on a fresh simulator (C = 500, L = 50 ms by default), killed with
SIGKILL each time the simulator has answered another fraction of N, resumed after each
kill, and run to the end. At each kill: the simulator's in-flight count just after the
signal (requests the dead process had sent, which the simulator still answers and
bills), and, once the simulator has drained, the rows it billed that the checkpoint does
not hold (the answers the kill cost). Prints one line per kill, the medians, and the
total billed against N; ``--json`` writes the figures.

The simulator's count undercounts what the runner has in flight when its loop is busy:
an answer the simulator has sent and billed is still in flight for the runner until the
loop reads it. The runner never has more than C requests out, so the kill's cost beyond
the cap C bounds what the writer had not yet committed; both are printed.

    python bench/kill_window.py [--rows 60000] [--concurrency 500] [--latency 0.05]
"""

from __future__ import annotations

import argparse
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

from harness import API_KEY, WORK, Child, Sim, _pin, tool_argv, write_spec


def _billed(stats: dict[str, Any]) -> int:
    return int(stats.get("billed", {}).get("requests", 0))


def _committed(out: Path) -> int:
    db = sqlite3.connect(f"file:{out / 'checkpoint.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        return int(db.execute("SELECT COUNT(*) FROM rows WHERE status = 'succeeded'").fetchone()[0])
    finally:
        db.close()


def _drain(sim: Sim) -> dict[str, Any]:
    sim.drain()
    time.sleep(0.1)  # the last answers' billing
    return sim.stats()


def one_job(args: argparse.Namespace, spec: Path) -> list[dict[str, Any]]:
    n, c = args.rows, args.concurrency
    tag = f"killwin-{time.monotonic_ns()}"
    out = WORK / "jobs" / tag
    logs = WORK / "logs"
    env = {"ZAI_API_KEY": API_KEY}
    pin = _pin(0, args.no_pin)
    kills: list[dict[str, Any]] = []
    lost_before = 0
    with Sim(args.latency, c, log=logs / f"sim-{tag}", ledger_ids=False, no_pin=args.no_pin) as sim:
        start = [*pin, *tool_argv("runner", spec, sim.base_url, c, out)]
        resume = [*pin, sys.executable, "-m", "runner", "resume", str(out), "--no-progress"]
        for k, frac in enumerate(args.at):
            child = Child(start if k == 0 else resume, log=logs / f"{tag}-{k}", env=env)
            target = int(n * frac)
            deadline = time.monotonic() + 300
            stats = sim.stats()
            while _billed(stats) < target and time.monotonic() < deadline:
                if child.poll() is not None:
                    break
                time.sleep(0.02)
                stats = sim.stats()
            # In flight at the kill: the simulator's count just after it (a count taken
            # before would miss what was sent while the stats request was answered).
            child.signal(signal.SIGKILL)
            in_flight = int(sim.stats().get("in_flight", 0))
            child.wait(60)
            after = _drain(sim)
            lost = _billed(after) - _committed(out) - lost_before
            lost_before += lost
            kills.append({
                "at": frac, "in_flight": in_flight, "lost": lost,
                "over_in_flight": lost - in_flight,
            })  # fmt: skip
            print(
                f"  kill at {frac:.0%}: {in_flight} in flight, {lost} answers lost "
                f"({lost - in_flight:+d} beyond those in flight)",
                flush=True,
            )
        done = Child(resume, log=logs / f"{tag}-end", env=env).wait(600)
        final = _drain(sim)
        billed = _billed(final)
        print(
            f"  resumed to the end: rc {done.rc}; billed {billed:,} for {n:,} rows "
            f"({billed - n:,} paid twice, {lost_before:,} counted at the kills)",
            flush=True,
        )
    shutil.rmtree(out, ignore_errors=True)
    return kills


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=60_000)
    p.add_argument("--concurrency", type=int, default=500)
    p.add_argument("--latency", type=float, default=0.05)
    p.add_argument("--at", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8])
    p.add_argument("--repeat", type=int, default=1, help="jobs to run (each killed at --at)")
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    (WORK / "jobs").mkdir(parents=True, exist_ok=True)
    (WORK / "logs").mkdir(parents=True, exist_ok=True)
    spec = write_spec(WORK / f"spec-killwin-{args.rows}.jsonl", args.rows, "killwin")
    print(
        f"== kill -9 window: N={args.rows:,}, C={args.concurrency}, L={args.latency} s, "
        f"{os.cpu_count()} cores",
        flush=True,
    )
    kills: list[dict[str, Any]] = []
    for _ in range(args.repeat):
        kills += one_job(args, spec)
    over = [k["over_in_flight"] for k in kills]
    over_cap = [k["lost"] - args.concurrency for k in kills]
    print(
        f"  median of {len(kills)} kills: {statistics.median(k['in_flight'] for k in kills):.0f} "
        f"in flight, {statistics.median(k['lost'] for k in kills):.0f} lost, "
        f"{statistics.median(over):+.0f} beyond in flight (worst {max(over):+d}); "
        f"{statistics.median(over_cap):+.0f} beyond the cap C (worst {max(over_cap):+d})",
        flush=True,
    )
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": None}, "kills": kills}))


if __name__ == "__main__":
    main()
