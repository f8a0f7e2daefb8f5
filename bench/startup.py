"""Start-up CPU of `runner run`: a one-row spec against a simulator process, run N times.

Two figures per run: *to the first request*, the process's CPU (user + system, from
``/proc``) at the moment the simulator sees its request (the simulator holds it for
``--latency``, so the process is idle then): Python start-up, imports, the spec check,
the checkpoint, the transport; the target is under 0.2 s. And *the whole one-row run*
(``getrusage`` of the finished child), which adds the answer, the commit and the export of
results.parquet (pyarrow is imported only then). Prints medians and every run.

    python bench/startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import API_KEY, WORK, Sim, compile_runner, process_cpu_s, write_spec


def one_run(sim: Sim, spec: Path, out: Path) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    received = sum(int(v) for v in sim.stats().get("requests", {}).values())
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(spec), "--out", str(out),
         "--base-url", sim.base_url, "--no-progress"],
        env={**os.environ, "ZAI_API_KEY": API_KEY}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, cwd=WORK,
    )  # fmt: skip
    first = float("nan")
    while proc.poll() is None:
        if sum(int(v) for v in sim.stats().get("requests", {}).values()) > received:
            first = process_cpu_s(proc.pid)
            break
        time.sleep(0.01)
    if proc.wait() != 0:
        raise SystemExit(f"runner run failed with exit code {proc.returncode}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return first, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--no-pin", action="store_true")
    args = p.parse_args()
    compile_runner()
    (WORK / "logs").mkdir(parents=True, exist_ok=True)
    spec = write_spec(WORK / "spec-startup-1.jsonl", 1, "startup")
    firsts, wholes = [], []
    log = WORK / "logs" / "sim-startup"
    with (
        tempfile.TemporaryDirectory() as tmp,
        Sim(0.3, 8, log=log, ledger_ids=False, no_pin=args.no_pin) as sim,
    ):
        for i in range(args.runs):
            out = Path(tmp) / f"out-{i}"
            first, whole = one_run(sim, spec, out)
            shutil.rmtree(out, ignore_errors=True)
            firsts.append(first)
            wholes.append(whole)
    for name, values in (("to the first request", firsts), ("whole one-row run", wholes)):
        print(
            f"runner run, CPU {name}: median {statistics.median(values):.3f} s "
            f"({len(values)} runs: " + " ".join(f"{v:.3f}" for v in values) + ")"
        )


if __name__ == "__main__":
    main()
