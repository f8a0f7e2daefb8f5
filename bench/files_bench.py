"""Rows with local files: does the runner's memory stay flat as files grow in number?

Writes distinct image files of `--mb` MiB (a PNG header and random bytes: the platform and
the simulator look at the type, not the pixels), a spec of `--rows` chat rows naming them
(each file named by rows/`--files` rows), and runs `runner run` on it against the simulator
in its own process at `--concurrency` and `--latency`. Prints, per row count, the runner's
peak RSS, its CPU seconds per MiB sent, rows/s, and the server's peak in flight (the body
budget, not the concurrency, sets it for big files).

    python bench/files_bench.py                     # 200, 1,000, 2,000 rows of 5 MiB
    python bench/files_bench.py --rows 200 --mb 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from harness import WORK, Child, Sim

ROOT = Path(__file__).resolve().parents[1]
PNG_HEAD = b"\x89PNG\r\n\x1a\n"


def write_job(folder: Path, rows: int, files: int, mb: float) -> Path:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    size = int(mb * 1024 * 1024)
    for i in range(files):
        path = folder / "img" / f"{i:04d}.png"
        if not path.exists() or path.stat().st_size != size:
            path.write_bytes(PNG_HEAD + os.urandom(size - len(PNG_HEAD)))
    spec = folder / f"spec-{rows}.jsonl"
    with spec.open("w") as f:
        for r in range(rows):
            content = [
                {"type": "image_url", "image_url": {"url": f"img/{r % files:04d}.png"}},
                {"type": "text", "text": f"Describe image {r}"},
            ]
            body = {"model": "glm-4.5v", "messages": [{"role": "user", "content": content}]}
            f.write(json.dumps({"custom_id": f"r{r}", "body": body}) + "\n")
    return spec


def run(args: argparse.Namespace, folder: Path, rows: int) -> dict[str, float]:
    spec = write_job(folder, rows, args.files, args.mb)
    out = folder / f"out-{rows}"
    log = folder / f"sim-{rows}.log"
    with Sim(args.latency, 10_000, log=log, ledger_ids=False, no_pin=True) as sim:
        argv = [sys.executable, "-m", "runner", "run", str(spec), "--out", str(out),
                "--provider", "zai", "--base-url", sim.base_url, "--no-progress",
                "--concurrency", str(args.concurrency)]  # fmt: skip
        if args.budget is not None:
            argv += ["--body-budget", str(args.budget)]
        env = {**os.environ, "ZAI_API_KEY": "bench.key"}
        t0 = time.monotonic()
        child = Child(argv, log=folder / f"runner-{rows}.log", env=env)
        done = child.wait(3600)
        wall = time.monotonic() - t0
        stats = sim.drain()
    if done.rc != 0:
        raise SystemExit(f"runner failed ({done.rc}): {done.stderr[-2000:]}")
    sent_mb = rows * args.mb
    return {
        "rows": rows,
        "peak_rss_mb": round(done.maxrss_mb, 1),
        "cpu_s": round(done.cpu_s, 2),
        "cpu_s_per_mb": round(done.cpu_s / sent_mb, 4),
        "rows_per_s": round(rows / wall, 1),
        "server_peak_in_flight": stats["peak_in_flight"],
        "files_received": len(stats["files"]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[200, 1000, 2000])
    p.add_argument("--files", type=int, default=50, help="distinct files the rows name")
    p.add_argument("--mb", type=float, default=5.0, help="MiB per file")
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--latency", type=float, default=0.5)
    p.add_argument("--budget", type=int, help="--body-budget MiB (default: the runner's)")
    args = p.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="files-bench-") as tmp:
        for rows in args.rows:
            print(json.dumps(run(args, Path(tmp), rows)), flush=True)


if __name__ == "__main__":
    main()
