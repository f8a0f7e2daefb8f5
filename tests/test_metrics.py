"""--metrics-port: Prometheus metrics of a running job, scraped from a real `runner run`
process against the simulator and parsed with prometheus_client's own parser."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
from prometheus_client.parser import text_string_to_metric_families
from simproc import SimProcess

KEY = "metrics-test-key-4a8e0b12"
ROOT = Path(__file__).resolve().parents[1]


def write_spec(path: Path, n: int) -> Path:
    with path.open("wb") as f:
        for i in range(n):
            model = "glm-4.7-flash" if i % 3 == 0 else "glm-4.5-air"
            body = {"model": model, "messages": [{"role": "user", "content": f"q{i}"}]}
            f.write(orjson.dumps({"custom_id": f"r{i}", "body": body}) + b"\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stored(out: Path, status: str = "succeeded") -> int:
    conn = sqlite3.connect(f"file:{out / 'checkpoint.sqlite'}?mode=ro", uri=True)
    try:
        return int(
            conn.execute("SELECT COUNT(*) FROM rows WHERE status = ?", [status]).fetchone()[0]
        )
    finally:
        conn.close()


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def start(spec: Path, out: Path, sim: SimProcess, port: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(spec), "--out", str(out),
         "--base-url", sim.base_url, "--concurrency", "16", "--no-progress",
         "--metrics-port", str(port), *extra],
        env={**os.environ, "ZAI_API_KEY": KEY}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip


def scrape_when_ready(port: int, proc: subprocess.Popen[str], want: int = 1) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, proc.communicate()
        try:
            if scrape(port)["runner_rows"][(("status", "succeeded"),)] >= want:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_scrape_matches_the_checkpoint_and_parses(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.jsonl", 4000)
    out = tmp_path / "out"
    port = free_port()
    with SimProcess("--latency", "0.05", "--rate-429", "0.02") as sim:
        proc = start(spec, out, sim, port)
        try:
            scrape_when_ready(port, proc, want=200)
            before = stored(out)
            m = scrape(port)
            after = stored(out)
            time.sleep(1.0)
            one_second = stored(out) - after  # a second of work, for the tolerance
            assert proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)
    ok = m["runner_rows"][(("status", "succeeded"),)]
    assert before - one_second <= ok <= after + one_second, (before, ok, after, one_second)
    assert m["runner_rows_done_total"][(("status", "succeeded"),)] == ok  # a fresh job
    assert (
        m["runner_rows"][(("status", "pending"),)]
        == 4000 - ok - m["runner_rows"][(("status", "failed"),)]
    )
    by_key = m["runner_key_requests_total"]
    models = {dict(k)["model"] for k in by_key}
    assert models == {"glm-4.7-flash", "glm-4.5-air"}
    assert all(dict(k)["key"].startswith("key #1") for k in by_key)
    assert sum(by_key.values()) == m["runner_requests_total"][()] > 0
    assert sum(m["runner_key_rate_limited_total"].values()) == m["runner_rate_limited_total"][()]
    limits = m["runner_key_limit"]
    assert all(1 <= v <= 16 for v in limits.values()) and len(limits) == 2
    assert m["runner_tokens_total"][(("kind", "prompt"),)] > 0
    assert m["runner_cost_total"][(("currency", "USD"),)] > 0
    assert set(m["runner_queue_depth"]) == {
        (("model", "glm-4.5-air"),),
        (("model", "glm-4.7-flash"),),
    }
    assert m["runner_key_active"][(("key", next(iter(by_key))[0][1]),)] == 1
    assert "process_cpu_seconds_total" in m
    text = str(m)
    assert KEY not in text


def test_on_resume_the_rows_are_the_jobs(tmp_path: Path) -> None:
    """The rows gauge counts what earlier runs committed too, as `runner status` does."""
    spec = write_spec(tmp_path / "spec.jsonl", 600)
    out = tmp_path / "out"
    with SimProcess("--latency", "0.02") as sim:
        r = subprocess.run(
            [sys.executable, "-m", "runner", "run", str(spec), "--out", str(out),
             "--base-url", sim.base_url, "--no-progress", "--max-cost", "0.001"],
            env={**os.environ, "ZAI_API_KEY": KEY}, capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        assert r.returncode == 3, r.stderr
        first = stored(out)
        assert 0 < first < 600
        sim.configure(latency=0.2)  # the resume, slower, so it is scraped mid-run
        port = free_port()
        proc = start(spec, out, sim, port)
        try:
            scrape_when_ready(port, proc, want=first + 1)
            before = stored(out)
            m = scrape(port)
            after = stored(out)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)
    ok = m["runner_rows"][(("status", "succeeded"),)]
    assert before - 40 <= ok <= after + 40, (before, ok, after)
    assert ok == first + m["runner_rows_done_total"][(("status", "succeeded"),)]
