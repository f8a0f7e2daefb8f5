"""``--scale``: a million rows through the runner; then stop it twice and resume it.

The uninterrupted run gives peak RSS and throughput at scale. The resume test keeps one
simulator up throughout: SIGTERM at half the rows, resume, SIGKILL at three quarters,
resume to the end, and for each resume the time from process start to the first request
the simulator sees (polled every 50 ms). The simulator's billed count minus N is what the
kills cost: rows answered but not yet committed when the process died.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import API_KEY, WORK, Child, Sim, _child_env, _pin, run_tool, tool_argv, write_spec
from report import _short


def _served(stats: dict[str, Any]) -> int:
    return int(stats.get("statuses", {}).get("200", 0))


def _received(stats: dict[str, Any]) -> int:
    return sum(int(v) for v in stats.get("requests", {}).values())


def _wait_for(sim: Sim, child: Child, pred: Any, timeout: float, interval: float) -> float | None:
    """Poll the simulator until pred(stats) holds; seconds since the child started, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred(sim.stats()):
            return time.monotonic() - child.started
        if child.poll() is not None:
            return None
        time.sleep(interval)
    return None


def _status_json(out: Path) -> tuple[dict[str, Any], float]:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "status", str(out), "--json"],
        cwd=WORK, env={**os.environ, **_child_env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    took = time.monotonic() - t0
    try:
        return json.loads(proc.stdout), took
    except json.JSONDecodeError:
        return {"error": proc.stderr[-300:]}, took


def kill_and_resume(
    spec: Path, n: int, c: int, latency: float, args: argparse.Namespace
) -> dict[str, Any]:
    """SIGTERM at half, resume; SIGKILL at three quarters, resume to the end."""
    tag = f"resume-{time.monotonic_ns()}"
    out = WORK / "jobs" / tag
    logs = WORK / "logs"
    env = {"ZAI_API_KEY": API_KEY}
    pin = _pin(0, args.no_pin)
    res: dict[str, Any] = {"n": n, "c": c, "latency": latency}
    limit = 120 + 8 * math.ceil(n / c) * latency
    with Sim(latency, c, log=logs / f"sim-{tag}", ledger_ids=False, no_pin=args.no_pin) as sim:
        start = [*pin, *tool_argv("runner", spec, sim.base_url, c, out)]
        resume = [*pin, sys.executable, "-m", "runner", "resume", str(out), "--no-progress"]
        phases = []
        # Phase 1: run, SIGTERM when half the rows are answered.
        child = Child(start, log=logs / f"{tag}-1", env=env)
        at = _wait_for(sim, child, lambda s: _served(s) >= n // 2, limit, 0.2)
        t_sig = time.monotonic()
        child.signal(signal.SIGTERM)
        done = child.wait(120)
        stats = sim.drain()
        status, status_s = _status_json(out)
        phases.append({
            "phase": "run, SIGTERM at half", "signal_at_s": at, "rc": done.rc,
            "stop_s": done.wall_s - (t_sig - child.started),
            "served": _served(stats), "committed": status.get("succeeded"), "cpu_s": done.cpu_s,
            "maxrss_mb": done.maxrss_mb, "status_json_s": status_s,
        })  # fmt: skip
        # Phase 2: resume; time to its first request; SIGKILL at three quarters.
        base = _received(stats)
        child = Child(resume, log=logs / f"{tag}-2", env=env)
        first = _wait_for(sim, child, lambda s: _received(s) > base, 300, 0.05)
        at = _wait_for(sim, child, lambda s: _served(s) >= 3 * n // 4, limit, 0.2)
        child.signal(signal.SIGKILL)
        in_flight = int(sim.stats().get("in_flight", 0))  # sent by the dead process
        done = child.wait(60)
        stats = sim.drain()
        status, status_s = _status_json(out)
        phases.append({
            "phase": "resume after SIGTERM, SIGKILL at 3/4", "first_request_s": first,
            "signal_at_s": at, "rc": done.rc, "served": _served(stats),
            "in_flight_at_kill": in_flight,
            "committed": status.get("succeeded"), "cpu_s": done.cpu_s,
            "maxrss_mb": done.maxrss_mb, "status_json_s": status_s,
        })  # fmt: skip
        # Phase 3: resume after the kill, to the end.
        base = _received(stats)
        child = Child(resume, log=logs / f"{tag}-3", env=env)
        first = _wait_for(sim, child, lambda s: _received(s) > base, 300, 0.05)
        done = child.wait(limit)
        stats = sim.drain()
        status, status_s = _status_json(out)
        phases.append({
            "phase": "resume after SIGKILL, to the end", "first_request_s": first, "rc": done.rc,
            "wall_s": done.wall_s, "served": _served(stats), "committed": status.get("succeeded"),
            "failed": status.get("failed"), "cpu_s": done.cpu_s, "maxrss_mb": done.maxrss_mb,
            "status_json_s": status_s,
        })  # fmt: skip
        res["phases"] = phases
        res["billed"] = int(stats.get("billed", {}).get("requests", 0))
        res["paid_twice"] = res["billed"] - n
        res["http_429"] = int(stats.get("statuses", {}).get("429", 0))
    shutil.rmtree(out, ignore_errors=True)
    return res


def scale(args: argparse.Namespace) -> dict[str, Any]:
    n, c, latency = args.scale_rows, args.scale_concurrency, args.scale_latency
    t0 = time.monotonic()
    spec = write_spec(WORK / f"spec-scale-{n}.jsonl", n, "scale")
    gen_s = time.monotonic() - t0
    print(
        f"== scale: N={n:,}, C={c}, L={latency} s (spec ready in {gen_s:.1f} s, "
        f"{spec.stat().st_size / 1e6:.0f} MB)",
        flush=True,
    )
    full = run_tool("runner", c, latency, spec, n, no_pin=args.no_pin, ledger_ids=False)
    print(
        f"  full run: {full.of_ideal:.2f} of ideal, {full.rate:,.0f} rows/s, proc "
        f"{full.proc_wall_s:.0f} s, {full.cpu_us:,.0f} µs CPU/req, peak RSS "
        f"{full.maxrss_mb:.0f} MB, ok {full.ok:,}/{n:,}{' ⚠ ' + full.note if full.note else ''}",
        flush=True,
    )
    kr = kill_and_resume(spec, n, c, latency, args)
    for ph in kr["phases"]:
        print("  " + ", ".join(f"{k}={_short(v)}" for k, v in ph.items()), flush=True)
    print(f"  billed {kr['billed']:,} for {n:,} rows: {kr['paid_twice']:,} paid twice", flush=True)
    return {
        "n": n,
        "c": c,
        "latency": latency,
        "spec_s": gen_s,
        "spec_mb": spec.stat().st_size / 1e6,
        "full": full,
        "resume": kr,
    }
