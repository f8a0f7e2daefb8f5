"""The job behind docs/report.png: a report worth looking at, made from nothing.

`make report-demo` runs this. It serves the simulator with a concurrency limit below the
runner's cap (so the platform answers 1302) and random 429s (1305), runs a spec of
`--rows` chat rows of two models with ten content-filtered rows (`[[sim:sensitive]]`,
code 1301), stops the job with SIGTERM part-way and resumes it (so the report shows two
runs and the gap between them), writes `runner report`, and with `--screenshot PNG` takes
a picture of the page in headless Chromium.

    python bench/report_demo.py                       # report in report-demo/report.html
    python bench/report_demo.py --screenshot docs/report.png
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
FILTERED = 10


def write_spec(path: Path, rows: int) -> None:
    step = rows // FILTERED
    with path.open("wb") as f:
        for i in range(rows):
            text = f"Summarise item {i} in one sentence."
            if i % step == step // 2 + (i // step) % 3:  # spread over both models
                text += " [[sim:sensitive]]"
            model = "glm-4.7-flash" if i % 3 == 0 else "glm-4.5-air"
            row = {
                "custom_id": f"item-{i:05d}",
                "url": "/v4/chat/completions",
                "body": {"model": model, "messages": [{"role": "user", "content": text}]},
            }
            f.write(orjson.dumps(row) + b"\n")


def runner(*args: str) -> list[str]:
    return [sys.executable, "-m", "runner", *args]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "report-demo")
    ap.add_argument("--rows", type=int, default=6000)
    ap.add_argument("--stop-after", type=float, default=8.0, help="seconds before SIGTERM")
    ap.add_argument("--screenshot", type=Path, help="write a PNG of the page here")
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    spec = args.out / "spec.jsonl"
    write_spec(spec, args.rows)
    # Relative paths where possible: the page shows the spec's path as the job recorded it.
    with contextlib.suppress(ValueError):
        spec = spec.resolve().relative_to(ROOT)
    env = {**os.environ, "ZAI_API_KEY": "report-demo"}
    sim = subprocess.Popen(
        [sys.executable, "-m", "runner.sim", "--port", "0", "--latency", "0.3",
         "--latency-dist", "lognormal", "--rate-429", "0.03", "--concurrency", "40"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert sim.stdout is not None
        base_url = sim.stdout.readline().strip()
        job = args.out / "job"
        first = subprocess.Popen(
            runner("run", str(spec), "--out", str(job), "--base-url", base_url,
                   "--concurrency", "48", "--no-progress"),
            env=env, cwd=ROOT,
        )  # fmt: skip
        time.sleep(args.stop_after)
        first.send_signal(signal.SIGTERM)
        first.wait()
        time.sleep(3)  # a visible gap between the two runs
        subprocess.run(runner("resume", str(job), "--no-progress"), env=env, cwd=ROOT)
    finally:
        sim.terminate()
        sim.wait()
    page = args.out / "report.html"
    subprocess.run(runner("report", str(job), "-o", str(page)), check=True, cwd=ROOT)
    if args.screenshot:
        shoot(page, args.screenshot)
        print(f"screenshot: {args.screenshot}")
    return 0


def shoot(page: Path, png: Path) -> None:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise SystemExit("--screenshot needs Chromium (Debian's `chromium` package)")
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", f"--user-data-dir={profile}", "--window-size=1280,1350",
             "--virtual-time-budget=5000", f"--screenshot={png.resolve()}",
             page.resolve().as_uri()],
            check=True, capture_output=True,
        )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
