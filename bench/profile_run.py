"""Where the runner's CPU goes on one benchmark case: py-spy over a whole `runner run`.

The simulator and py-spy run on core 1, the runner on core 0 (as in run_bench.py); py-spy
samples the stacks of the thread holding the GIL (idle waits left out) and this script
folds them into the functions with the most samples of their own (self) and in total
(inclusive), as shares of the samples.

    pip install py-spy
    python bench/profile_run.py --models 4 --concurrency 500 --latency 1 --rows 20000

Sampling costs the runner little (py-spy reads its memory from another core), but the
figures are shares of a profile, not the benchmark's CPU per row: take those from
run_bench.py.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import harness
from harness import WORK, Sim, _pin, compile_runner, tool_argv, write_spec

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]*)(?::\d+)?\)$")


def _where(frame: str) -> str:
    """`func (path/to/file.py:123)` -> `file.py:func`: one name per function, not per line."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"]
    for marker in ("site-packages/", "/runner/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{Path(path).as_posix()}:{m['func']}"


def fold(raw: Path) -> tuple[int, Counter[str], Counter[str]]:
    """Total samples, and samples per function as the innermost frame and anywhere."""
    total = 0
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_where(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for name in set(frames):
            incl[name] += n
    return total, own, incl


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=500, help="C per model.")
    p.add_argument("--latency", type=float, default=1.0)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second.")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--no-pin", action="store_true")
    args = p.parse_args(argv)
    compile_runner()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    for sub in ("jobs", "logs"):
        (WORK / sub).mkdir(parents=True, exist_ok=True)
    tag = "" if args.models == 1 else f"-m{args.models}"
    name = f"spec-{args.rows}{tag}.jsonl"
    spec = write_spec(WORK / name, args.rows, "bench", models=args.models)
    out = WORK / "jobs" / "profile"
    shutil.rmtree(out, ignore_errors=True)
    raw = WORK / "profile.txt"
    log = WORK / "logs" / "sim-profile"
    with Sim(args.latency, args.concurrency, log=log, ledger_ids=True, no_pin=args.no_pin) as sim:
        runner = tool_argv("runner", spec, sim.base_url, args.concurrency, out)
        cmd = [
            *_pin(1, args.no_pin), pyspy, "record", "--gil", "--format", "raw",
            "-r", str(args.rate), "-o", str(raw), "--", *_pin(0, args.no_pin), *runner,
        ]  # fmt: skip
        env = {"ZAI_API_KEY": harness.API_KEY}
        proc = subprocess.run(cmd, cwd=WORK, env={**os.environ, **env}, check=False)
        stats = sim.stats()
    if proc.returncode != 0 or not raw.exists():
        print(f"py-spy or the runner failed (rc {proc.returncode})", file=sys.stderr)
        return 1
    total, own, incl = fold(raw)
    print(f"{total} samples at {args.rate}/s; 429s: {stats.get('statuses', {}).get('429', 0)}")
    for title, counts in (("self", own), ("inclusive", incl)):
        print(f"\ntop {args.top} by {title} samples:")
        for func, n in counts.most_common(args.top):
            print(f"  {n / total:6.1%}  {func}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
