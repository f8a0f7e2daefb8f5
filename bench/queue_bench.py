"""A self-hosted server with S slots and a FIFO queue: does concurrency past it cost work?

Starts the simulator in queueing mode (`--slots` decoding slots, `--service` seconds an
answer), then runs the same job twice through `runner run --provider openai` as a user of a
vLLM or llama.cpp server would: once at `--concurrency` well past the slots, once at the
slots. It prints, per run, the wall time, the server's work (tasks started, and those whose
client had left: work for nobody) and the requests the runner sent, then the two ratios
issue 28 asks for: server work per row at high concurrency, and the wall time against the
run at the slots.

    python bench/queue_bench.py                       # 200 rows, 4 slots, 1 s, 50 vs 4
    python bench/queue_bench.py --rows 60 --service 0.5   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _post(root: str, path: str, data: dict[str, Any]) -> None:
    req = urllib.request.Request(root + path, data=json.dumps(data).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()


def _stats(root: str) -> dict[str, Any]:
    with urllib.request.urlopen(root + "/_sim/stats", timeout=10) as r:
        return dict(json.loads(r.read()))


def _drain(root: str) -> None:
    """Wait until the server has no work left from a previous run."""
    while True:
        work = _stats(root)["server_work"]
        if not work.get("busy") and not work.get("queued"):
            return
        time.sleep(0.2)


def run_once(root: str, spec: Path, out: Path, concurrency: int, timeout: float) -> dict[str, Any]:
    _drain(root)
    _post(root, "/_sim/reset", {})
    env = {**os.environ, "OPENAI_API_KEY": "bench-key"}
    cmd = [
        sys.executable,
        "-m",
        "runner",
        "run",
        str(spec),
        "--out",
        str(out),
        "--provider",
        "openai",
        "--base-url",
        root + "/v1",
        "--concurrency",
        str(concurrency),
        "--timeout",
        str(timeout),
        "--no-progress",
    ]
    began = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.monotonic() - began
    stats = _stats(root)
    return {
        "concurrency": concurrency,
        "exit": proc.returncode,
        "wall_s": round(wall, 2),
        "requests": stats["requests"].get("chat/completions", 0),
        "started": stats["server_work"]["started"],
        "cancelled": stats["server_work"]["cancelled"],
        "message": proc.stdout.strip().splitlines()[-1:] or proc.stderr.strip()[-300:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--service", type=float, default=1.0, help="seconds per answer")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    sim = subprocess.Popen(
        [sys.executable, "-m", "runner.sim", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    try:
        assert sim.stdout is not None
        root = sim.stdout.readline().strip().split("/api/")[0]
        knobs = {"queue_slots": args.slots, "service_seconds": args.service}
        _post(root, "/_sim/config", knobs)
        with tempfile.TemporaryDirectory() as tmp:
            spec = Path(tmp) / "spec.jsonl"
            with spec.open("w") as f:
                for i in range(args.rows):
                    body = {
                        "model": "my-local-model",
                        "messages": [{"role": "user", "content": f"question {i}"}],
                        "max_tokens": 32,
                    }
                    f.write(json.dumps({"custom_id": f"r{i}", "body": body}) + "\n")
            runs = [
                run_once(root, spec, Path(tmp) / f"out{c}", c, args.timeout)
                for c in (args.concurrency, args.slots)
            ]
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    print(
        f"{args.rows} rows, {args.slots} slots, {args.service} s an answer, "
        f"--timeout {args.timeout}"
    )
    for r in runs:
        print(
            f"  --concurrency {r['concurrency']:>3}: wall {r['wall_s']:6.1f} s, "
            f"sent {r['requests']}, server started {r['started']} "
            f"({r['cancelled']} for nobody), exit {r['exit']}"
        )
    high, low = runs
    print(f"  server work per row at {high['concurrency']}: {high['started'] / args.rows:.3f}")
    print(
        f"  wall time {high['concurrency']} vs {low['concurrency']}: "
        f"{high['wall_s'] / low['wall_s']:.3f}"
    )


if __name__ == "__main__":
    main()
