"""`runner serve` and `runner run --serve`: the live page of a job, in headless Chromium
with the network off beyond loopback, from real processes against the simulator."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from browser import chromium, dump_dom
from simproc import SimProcess

from runner.report.live import LiveReport, live_figures

KEY = "serve-test-key-7f31b2c9"
ROOT = Path(__file__).resolve().parents[1]


def write_spec(path: Path, n: int) -> Path:
    with path.open("wb") as f:
        for i in range(n):
            body = {"model": "glm-4.5-air", "messages": [{"role": "user", "content": f"q{i}"}]}
            f.write(orjson.dumps({"custom_id": f"r{i}", "body": body}) + b"\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


def wait_for(pred: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def answers(url: str) -> bool:
    try:
        return get(url)[0] == 200
    except OSError:
        return False


def succeeded_on(dom: str) -> int:
    m = re.search(r'data-figure="succeeded">([\d,]+)<', dom)
    assert m, dom[:2000]
    return int(m.group(1).replace(",", ""))


def start_serve(out: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "serve", str(out), "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"(http://\S+/)", line)
    assert m, (line, proc.stderr.read() if proc.stderr else "")
    return proc, m.group(1)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    s = SimProcess("--latency", "0.05")
    try:
        yield s
    finally:
        s.stop()


def test_the_served_page_of_a_20000_row_job_rises_in_chromium(
    tmp_path: Path, sim: SimProcess
) -> None:
    chromium()
    spec = write_spec(tmp_path / "spec.jsonl", 20_000)
    out = tmp_path / "out"
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    job = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(spec), "--out", str(out),
         "--base-url", sim.base_url, "--concurrency", "24", "--no-progress",
         "--serve", str(port)],
        env={**os.environ, "ZAI_API_KEY": KEY}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        wait_for(lambda: answers(url + "live.json"))
        wait_for(lambda: json.loads(get(url + "live.json")[1])["succeeded"] > 0)
        first = dump_dom(url)
        time.sleep(5)
        second = dump_dom(url)
        status, page, headers = get(url)
        assert job.poll() is None, "the job ended before the second look"
    finally:
        job.send_signal(signal.SIGTERM)
        _, err = job.communicate(timeout=60)
    assert job.returncode == 3, err  # stopped by the signal, resumable
    a, b = succeeded_on(first), succeeded_on(second)
    assert 0 < a < b < 20_000, (a, b)
    assert 'id="live-state">running<' in second
    assert re.search(r'data-figure="rate">[\d,.]+ rows/s<', second)
    assert re.search(r'data-figure="in_flight">\d+ / 24<', second)
    assert re.search(r'<html[^>]*data-charts="(\d+)"', second)  # the report's charts drew
    # Self-contained: the page names nothing beyond itself, and says so to the browser.
    assert status == 200 and "connect-src 'self'" in headers["content-security-policy"]
    html = re.sub(r"<script\b.*?</script>", "", page.decode(), flags=re.S)
    assert not re.search(r"""(?:\b(?:src|href|action)\s*=\s*["']?https?:|url\(|@import)""", html)
    assert KEY not in page.decode() and KEY not in first + second
    # The page went with the job: nothing listens on its port any more.
    wait_for(lambda: not answers(url + "live.json"), timeout=10)


def test_serve_an_ended_job_and_its_figures(tmp_path: Path, sim: SimProcess) -> None:
    spec = write_spec(tmp_path / "spec.jsonl", 300)
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(spec), "--out", str(out),
         "--base-url", sim.base_url, "--concurrency", "50", "--no-progress"],
        env={**os.environ, "ZAI_API_KEY": KEY}, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    proc, url = start_serve(out)
    try:
        status, body, _ = get(url)
        assert status == 200 and b'data-figure="succeeded">300<' in body
        assert b'id="live-state">not running<' in body
        status, body, _ = get(url + "live.json")
        live = json.loads(body)
        assert (live["succeeded"], live["pending"], live["live"]) == (300, 0, False)
        st = subprocess.run(
            [sys.executable, "-m", "runner", "status", str(out), "--json"],
            capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        assert live["cost_nano"] == round(json.loads(st.stdout)["cost"]["total"] * 1e9)
        assert get(url + "nope")[0] == 404
    finally:
        stop(proc)
    assert proc.returncode == 0


def test_beyond_loopback_the_page_asks_for_its_token(tmp_path: Path, sim: SimProcess) -> None:
    spec = write_spec(tmp_path / "spec.jsonl", 20)
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(spec), "--out", str(out),
         "--base-url", sim.base_url, "--no-progress"],
        env={**os.environ, "ZAI_API_KEY": KEY}, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    # 0.0.0.0 is beyond loopback: a token is generated and printed, and required.
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "serve", str(out), "--port", "0", "--host", "0.0.0.0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stderr is not None and proc.stdout is not None
        token = proc.stderr.readline().strip().rsplit(" ", 1)[-1]
        port = re.search(r":(\d+)/", proc.stdout.readline())
        assert port and len(token) >= 20
        url = f"http://127.0.0.1:{port.group(1)}/"
        status, body, _ = get(url)
        assert status == 401 and b'name="token"' in body and b"succeeded" not in body
        assert get(url + "live.json")[0] == 401
        assert get(url + "?token=wrong")[0] == 401
        assert get(url, {"Authorization": f"Bearer {token}"})[0] == 200
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(url + f"?token={token}", timeout=30) as resp:  # redirects to /
            assert resp.status == 200 and resp.url == url
            assert b'data-figure="succeeded">20<' in resp.read()
        with opener.open(url + "live.json", timeout=30) as resp:  # the cookie now
            assert json.loads(resp.read())["succeeded"] == 20
    finally:
        stop(proc)


def test_the_page_waits_for_a_job_that_has_not_begun(tmp_path: Path) -> None:
    proc, url = start_serve(tmp_path)
    try:
        status, body, _ = get(url)
        assert status == 200 and b"Waiting for the job" in body
        assert get(url + "live.json")[0] == 503
    finally:
        stop(proc)


def test_live_figures_read_little(tmp_path: Path, sim: SimProcess) -> None:
    """The live figures need no report, and the report is rebuilt only when due."""
    spec = write_spec(tmp_path / "spec.jsonl", 50)
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(spec), "--out", str(out),
         "--base-url", sim.base_url, "--no-progress"],
        env={**os.environ, "ZAI_API_KEY": KEY}, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    figures = live_figures(out / "checkpoint.sqlite", None)
    assert (figures["succeeded"], figures["total"], figures["eta_s"]) == (50, 50, None)
    clock = [0.0]
    live = LiveReport(out / "checkpoint.sqlite", clock=lambda: clock[0])
    assert live._due()
    import anyio

    anyio.run(live.build)
    assert live.builds == 1 and not live._due()
    clock[0] += 11
    assert live._due()  # the report is older than MIN_AGE_S
    clock[0] += 120
    assert not live._due()  # ... but nobody has looked for a minute


def test_the_page_of_a_killed_job_stops_too(tmp_path: Path, sim: SimProcess) -> None:
    """kill -9 gives the job no chance to stop its page: the page stops itself."""
    spec = write_spec(tmp_path / "spec.jsonl", 2000)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    job = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(spec), "--out", str(tmp_path / "out"),
         "--base-url", sim.base_url, "--concurrency", "2", "--no-progress",
         "--serve", str(port)],
        env={**os.environ, "ZAI_API_KEY": KEY}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, cwd=ROOT,
    )  # fmt: skip
    try:
        wait_for(lambda: answers(url + "live.json"))
    finally:
        job.kill()
        job.wait()
    wait_for(lambda: not answers(url + "live.json"), timeout=15)
