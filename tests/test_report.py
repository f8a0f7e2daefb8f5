"""`runner report`: the per-second timeline, the page's figures, and the page in a browser."""

from __future__ import annotations

import math
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from browser import chromium, distinct_colours, dump_dom, screenshot
from click.testing import CliRunner
from simproc import SimProcess

from runner.cli import cli
from runner.progress import Counters
from runner.report.data import load_report, percentile
from runner.report.sketch import LatencySketch
from runner.report.timeline import Recorder

KEY = "report-test-key-5b1c9e"
SENSITIVE = {7, 111, 222, 333, 444, 555, 666, 777, 888, 999}


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), env={"ZAI_API_KEY": KEY})


def write_spec(path: Path, n: int, sensitive: frozenset[int] | set[int] = frozenset()) -> Path:
    with path.open("wb") as f:
        for i in range(n):
            text = f"prompt {i}" + (" [[sim:sensitive]]" if i in sensitive else "")
            model = "glm-4.7-flash" if i % 4 == 0 else "glm-4.5-air"
            row = {
                "custom_id": f"row-{i:04d}",
                "url": "/v4/chat/completions",
                "body": {"model": model, "messages": [{"role": "user", "content": text}]},
            }
            f.write(orjson.dumps(row) + b"\n")
    return path


def test_recorder_turns_counter_samples_into_per_second_rows() -> None:
    c = Counters(cap=10)
    rec = Recorder(c, run=3)
    c.sent, c.in_flight = 5, 4
    rec.sample(100.0)
    c.in_flight = 6
    rec.sample(100.5)
    rec.sample(101.2)  # a new second: closes second 100 with what the counters say now
    c.sent, c.succeeded, c.failed, c.rate_limited, c.cost_nano, c.in_flight = 9, 7, 1, 2, 50, 0
    rec.sample(101.7)
    rec.close_second()
    rows = rec.take()
    # run, t, sent, done, failed, 429s, retries, cost, in flight mean / max, cap, polling
    assert rows == [
        (3, 100, 5, 0, 0, 0, 0, 0, 5.0, 6, 10, 0),
        (3, 101, 4, 8, 1, 2, 0, 50, 3.0, 6, 10, 0),
    ]
    assert rec.take() == []


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert (percentile(values, 50), percentile(values, 99), percentile([], 50)) == (50, 99, None)


def test_latency_sketch_is_within_half_a_percent_of_the_exact_percentiles() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(-1.5, 1.2) for _ in range(20_000)] + [0.00001, 3600.0]
    sketch = LatencySketch()
    for v in values:
        sketch.add(v)
    ordered = sorted(values)
    for q in (1, 50, 90, 99, 99.9, 100):
        exact = max(percentile(ordered, q) or 0, 1e-4)
        assert abs((sketch.percentile(q) or 0) / exact - 1) <= 0.005, q
    # The page's histogram: what counting each value in ten bins a decade gives.
    counts: dict[int, int] = {}
    for v in values:
        k = math.floor(math.log10(max(v, 1e-4)) * 10)
        counts[k] = counts.get(k, 0) + 1
    hist = sketch.histogram()
    lo = min(counts)
    assert hist["counts"] == [counts.get(lo + i, 0) for i in range(max(counts) - lo + 1)]
    assert (
        hist["edges"][0] == round(10 ** (lo / 10), 6)
        and len(hist["edges"]) == len(hist["counts"]) + 1
    )
    assert sketch.count == len(values) and sketch.max == 3600.0


def test_latency_sketch_is_exact_for_values_all_alike() -> None:
    sketch = LatencySketch()
    assert (sketch.percentile(50), sketch.histogram()) == (None, {"edges": [], "counts": []})
    for _ in range(3):
        sketch.add(0.523)
    assert [sketch.percentile(q) for q in (1, 50, 100)] == [0.523] * 3


@pytest.fixture
def busy_sim() -> Iterator[SimProcess]:
    """Random 429s (1305) and a concurrency limit under the runner's cap (1302s)."""
    s = SimProcess("--latency", "0.05", "--rate-429", "0.05", "--concurrency", "24")
    try:
        yield s
    finally:
        s.stop()


_EXTERNAL = re.compile(
    r"""(?:\b(?:src|href|srcset|action|poster)\s*=|url\(|@import|<link\b)""", re.I
)


def _without_scripts(page: str) -> str:
    return re.sub(r"<script\b.*?</script>", "", page, flags=re.S | re.I)


def test_report_of_a_1000_row_job_in_chromium(tmp_path: Path, busy_sim: SimProcess) -> None:
    chromium()  # skips (or fails under RUNNER_REQUIRE_BROWSER=1) before the job, not after
    spec = write_spec(tmp_path / "spec.jsonl", 1000, SENSITIVE)
    out = tmp_path / "out"
    r = invoke(
        "run", str(spec), "--out", str(out), "--base-url", busy_sim.base_url,
        "--concurrency", "32", "--no-progress",
    )  # fmt: skip
    assert r.exit_code == 1, r.output  # finished, with the 10 filtered rows failed
    page = tmp_path / "page" / "report.html"
    r = invoke("report", str(out), "-o", str(page))
    assert r.exit_code == 0, r.output
    assert str(page) in r.output
    html = page.read_text()

    # Self-contained: no reference to anything outside the page, and the key nowhere.
    assert not _EXTERNAL.search(_without_scripts(html))
    for script in re.findall(r"<script\b[^>]*>(.*?)</script>", html, flags=re.S):
        assert not re.search(r"\bfetch\(|XMLHttpRequest|import\(|importScripts", script)
    assert KEY not in html
    data = load_report(out / "checkpoint.sqlite")
    assert data["summary"]["succeeded"] == 990 and data["summary"]["failed"] == 10
    assert data["errors"][0]["code"] == "1301" and data["errors"][0]["rows"] == 10
    assert data["timeline"]["totals"]["rate_limited"] > 0  # the 429s were recorded
    assert data["timeline"]["totals"]["done"] == 1000

    # In the browser, with the network off: figures, charts, and no resource loaded.
    probe = tmp_path / "page" / "probe.html"
    probe.write_text(
        html.replace(
            "</body>",
            "<script>document.body.insertAdjacentHTML('beforeend', '<pre id=\"resources\">' + "
            "performance.getEntriesByType('resource').length + '</pre>');</script></body>",
        )
    )
    dom = dump_dom(probe)
    assert '<pre id="resources">0</pre>' in dom
    assert re.search(r'data-figure="succeeded">990<', dom)
    assert re.search(r'data-figure="failed">10<', dom)
    assert re.search(r'<td class="code">1301</td>', dom)
    assert "row-0007" in dom  # an example custom_id of the filtered rows
    figures = re.findall(r'<figure class="chart" id="chart-([a-z-]+)">(.*?)</figure>', dom, re.S)
    with_canvas = [key for key, body in figures if "<canvas" in body]
    assert len(with_canvas) >= 3, with_canvas
    charts = re.search(r'<html[^>]*data-charts="(\d+)"', dom)
    assert charts and int(charts.group(1)) >= 3

    png = screenshot(page, tmp_path / "report.png")
    colours, ink = distinct_colours(png)
    assert colours > 50, colours  # lines, fills, text anti-aliasing: a real picture
    assert ink > 0.03, ink


def _timeline_rows(out: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{out / 'checkpoint.sqlite'}?mode=ro", uri=True)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM timeline").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def test_report_of_a_running_job_then_its_resume(tmp_path: Path) -> None:
    """A report mid-run shows where the job stands and does not disturb it; the timeline of
    the first run survives the resume, and the final report shows both runs."""
    spec = write_spec(tmp_path / "spec.jsonl", 80)
    out = tmp_path / "out"
    with SimProcess("--latency", "0.25") as sim:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runner",
                "run",
                str(spec),
                "--out",
                str(out),
                "--base-url",
                sim.base_url,
                "--concurrency",
                "2",
                "--no-progress",
            ],
            env={**os.environ, "ZAI_API_KEY": KEY},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while _timeline_rows(out) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            page = tmp_path / "live.html"
            r = invoke("report", str(out), "-o", str(page))
            assert r.exit_code == 0, r.output
            live = load_report(out / "checkpoint.sqlite")
            assert live["live"] is True
            assert 0 < live["summary"]["succeeded"] < 80 and live["summary"]["pending"] > 0
            assert "running" in page.read_text()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 3  # stopped, resumable: the report did not break it
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        r = invoke("resume", str(out), "--no-progress")
        assert r.exit_code == 0, r.output
    final = load_report(out / "checkpoint.sqlite")
    assert final["summary"]["succeeded"] == 80 and final["live"] is False
    assert [run["outcome"] for run in final["runs"]] == ["stopped", "finished"]
    conn = sqlite3.connect(out / "checkpoint.sqlite")
    runs = {r[0] for r in conn.execute("SELECT DISTINCT run FROM timeline")}
    conn.close()
    assert runs == {1, 2}
    assert final["timeline"]["totals"]["done"] == 80


ROOT = Path(__file__).resolve().parents[1]


def test_report_shows_async_tasks_and_hostile_ids_escaped(tmp_path: Path) -> None:
    hostile = '</script><img src=x onerror="alert(1)">'
    spec = tmp_path / "spec.jsonl"
    lines = (ROOT / "samples" / "videos.jsonl").read_bytes().splitlines()
    row = {
        "custom_id": hostile,
        "url": "/v4/chat/completions",
        "body": {
            "model": "glm-4.5-air",
            "messages": [{"role": "user", "content": "hi [[sim:sensitive]]"}],
        },
    }
    spec.write_bytes(b"\n".join([*lines, orjson.dumps(row)]) + b"\n")
    out = tmp_path / "out"
    r = invoke("run", str(spec), "--out", str(out), "--provider", "sim", "--no-progress")
    assert r.exit_code == 1, r.output
    r = invoke("report", str(out))
    assert r.exit_code == 0, r.output
    html = (out / "report.html").read_text()
    assert hostile not in html and "<img" not in html
    assert "&lt;/script&gt;&lt;img src=x" in html  # shown, as text
    assert 'id="chart-tasks"' in html
    data = load_report(out / "checkpoint.sqlite")
    assert data["tasks"]["count"] == len(lines) and data["tasks"]["p50"] > 0


def test_report_of_a_batch_job_and_of_a_checkpoint_without_timeline(tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = str(ROOT / "samples" / "chat.jsonl")
    r = invoke(
        "run", spec, "--out", str(out), "--provider", "sim", "--mode", "batch", "--no-progress"
    )
    assert r.exit_code == 0, r.output
    conn = sqlite3.connect(out / "checkpoint.sqlite")
    with conn:
        conn.execute("DROP TABLE IF EXISTS timeline")  # as a job run before the timeline
    conn.close()
    r = invoke("report", str(out), "-o", str(tmp_path / "r.html"))
    assert r.exit_code == 0, r.output
    html = (tmp_path / "r.html").read_text()
    assert '<section id="batches">' in html and "completed" in html
    data = load_report(out / "checkpoint.sqlite")
    assert data["batches"][0]["lines"] == 20 and data["timeline"]["recorded"] is False
    assert data["summary"]["succeeded"] == 20


def test_report_refuses_a_folder_without_a_job(tmp_path: Path) -> None:
    r = invoke("report", str(tmp_path))
    assert r.exit_code == 2 and "no checkpoint" in r.output
