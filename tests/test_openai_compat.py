"""Any OpenAI-compatible server, used as a user would: a server that queues, a base URL
where nothing can work, a budget with no prices, and the smaller defects of issue 28."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from simproc import SimProcess

from jobs import KEY, chat_row, write_spec
from runner.endpoints import ENDPOINT_NOT_FOUND, raise_for_answer
from runner.errors import RetryableError, RowError, TransportFatal
from runner.health import GONE_MISSES, GONE_SECONDS, ServerHealth
from runner.http import Response
from runner.progress import Counters
from runner.store.totals import NO_MODEL

ROOT = Path(__file__).resolve().parents[1]


def runner_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENAI_API_KEY": KEY, "ZAI_API_KEY": KEY}
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spec_of(tmp_path: Path, rows: int, model: str = "my-model") -> Path:
    return write_spec(tmp_path / "spec.jsonl", (chat_row(i, model=model) for i in range(rows)))


@pytest.mark.parametrize("transport", ["fast", "httpx"])
def test_a_closed_port_stops_the_job_at_once_naming_the_base_url(
    tmp_path: Path, transport: str
) -> None:
    base = f"http://127.0.0.1:{free_port()}/v1"
    began = time.monotonic()
    done = runner_cli(
        "run",
        "--transport",
        transport,
        str(spec_of(tmp_path, 40)),
        "--out",
        str(tmp_path / "out"),
        "--provider",
        "openai",
        "--base-url",
        base,
        "--no-progress",
    )
    assert done.returncode == 3, done.stderr
    assert time.monotonic() - began < 10
    assert base in done.stderr and "listens" in done.stderr


def test_a_wrong_path_stops_the_job_naming_the_base_url(tmp_path: Path) -> None:
    with SimProcess() as sim:
        # The server is there, but the API is not under /nowhere: every row gets a 404.
        base = sim.root + "/nowhere"
        began = time.monotonic()
        done = runner_cli(
            "run",
            str(spec_of(tmp_path, 40)),
            "--out",
            str(tmp_path / "out"),
            "--provider",
            "openai",
            "--base-url",
            base,
            "--no-progress",
        )
        sent = sim.stats()["requests"].get("unknown", 0)
    assert done.returncode == 3, done.stderr
    assert time.monotonic() - began < 10
    assert base in done.stderr and "--base-url" in done.stderr
    assert sent < 40  # stopped, not ground through every row


def test_max_cost_with_an_unpriced_model_is_refused_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    spec = write_spec(
        tmp_path / "spec.jsonl",
        [chat_row(0, model="gpt-4o-mini"), chat_row(1, model="my-model")],
    )
    with SimProcess() as sim:
        base = sim.root + "/v1"
        args = ["run", str(spec), "--provider", "openai", "--base-url", base, "--no-progress"]
        done = runner_cli(*args, "--out", str(tmp_path / "a"), "--max-cost", "1")
        sent = sum(sim.stats()["requests"].values())
        assert done.returncode == 2, done.stderr
        assert sent == 0
        assert "my-model" in done.stderr and "--prices FILE" in done.stderr
        assert "gpt-4o-mini" not in done.stderr  # the shipped table prices it
        # With the user's prices for it, the budget can be kept: the job runs.
        prices = tmp_path / "prices.json"
        prices.write_bytes(orjson.dumps({"models": {"my-model": {"input": 1, "output": 2}}}))
        done = runner_cli(
            *args, "--out", str(tmp_path / "b"), "--max-cost", "1", "--prices", str(prices)
        )
        assert done.returncode == 0, done.stderr


def test_an_unpriced_model_is_no_price_not_zero(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with SimProcess() as sim:
        done = runner_cli(
            "run",
            str(spec_of(tmp_path, 3)),
            "--out",
            str(out),
            "--provider",
            "openai",
            "--base-url",
            sim.root + "/v1",
            "--no-progress",
        )
    assert done.returncode == 0, done.stderr
    assert "no price (3 rows with no price" in done.stdout
    assert "cost 0 USD" not in done.stdout
    shown = runner_cli("status", str(out))
    assert "cost: no price" in shown.stdout
    data = orjson.loads(runner_cli("status", str(out), "--json").stdout)
    assert data["cost"]["unpriced_rows"] == 3
    assert runner_cli("report", str(out)).returncode == 0
    page = (out / "report.html").read_text()
    assert "no price (3 rows with no price)" in page


def test_a_killed_run_shows_as_interrupted_once_its_lock_is_free(tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = spec_of(tmp_path, 200)
    with SimProcess("--latency", "0.5") as sim:
        env = {**os.environ, "OPENAI_API_KEY": KEY}
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
            sim.root + "/v1",
            "--no-progress",
            "--concurrency",
            "2",
        ]
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 30
            while sim.stats()["billed"]["requests"] < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            live = orjson.loads(runner_cli("status", str(out), "--json").stdout)
            assert live["runs"][-1]["outcome"] == "running"
        finally:
            proc.kill()
            proc.wait()
    data = orjson.loads(runner_cli("status", str(out), "--json").stdout)
    assert data["runs"][-1]["outcome"] == "interrupted"
    assert "killed" in data["runs"][-1]["message"]


def test_run_needs_no_key_for_a_loopback_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ZAI_API_KEY")}
    with SimProcess() as sim:
        done = subprocess.run(
            [sys.executable, "-m", "runner", "run", str(spec_of(tmp_path, 2)), "--out",
             str(tmp_path / "out"), "--provider", "openai", "--base-url", sim.root + "/v1",
             "--no-progress"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_an_error_body_keeps_its_type() -> None:
    body = orjson.dumps(
        {"error": {"code": 400, "message": "the prompt is too long",
                   "type": "exceed_context_size_error"}}
    )  # fmt: skip
    with pytest.raises(RowError) as caught:
        raise_for_answer(Response(400, [], body), error_shape="openai")
    assert "exceed_context_size_error" in caught.value.message


def test_a_5xx_for_an_unsupported_request_fails_the_row_at_once() -> None:
    body = orjson.dumps({"error": {"code": 500, "message": "image input is not supported"}})
    with pytest.raises(RowError):
        raise_for_answer(Response(500, [], body), error_shape="openai")
    # Any other 5xx is still worth another attempt.
    other = orjson.dumps({"error": {"code": 500, "message": "CUDA out of memory"}})
    with pytest.raises(RetryableError):
        raise_for_answer(Response(500, [], other), error_shape="openai")


def test_a_404_naming_the_model_is_the_rows_not_the_endpoints() -> None:
    body = orjson.dumps(
        {"error": {"code": "model_not_found", "message": "The model x does not exist"}}
    )
    with pytest.raises(RowError) as caught:
        raise_for_answer(Response(404, [], body), error_shape="openai")
    assert caught.value.code != ENDPOINT_NOT_FOUND


def test_the_progress_of_a_resume_adds_up() -> None:
    line = Counters(total=200, already_done=84, succeeded=16).line()
    assert "done 100/200 (84 earlier)  ok 16  failed 0" in line
    unpriced = Counters(total=10, succeeded=3, unpriced=3).line()
    assert "cost no price (3 rows)" in unpriced


def test_concurrency_past_a_queueing_servers_slots_costs_it_no_extra_work(
    tmp_path: Path,
) -> None:
    # Issue 28's storm, scaled down: 2 slots, 0.2 s an answer, 50 in flight allowed and a
    # timeout that a queue of 50 would pass (50 / 2 x 0.2 s = 5 s > 1 s).
    rows = 40
    with SimProcess() as sim:
        sim.configure(queue_slots=2, service_seconds=0.2)
        done = runner_cli(
            "run", str(spec_of(tmp_path, rows)), "--out", str(tmp_path / "out"),
            "--provider", "openai", "--base-url", sim.root + "/v1", "--no-progress",
            "--concurrency", "50", "--timeout", "1",
        )  # fmt: skip
        work = sim.stats()["server_work"]
    assert done.returncode == 0, done.stderr
    assert work["started"] <= rows * 1.1, work
    assert work["cancelled"] <= rows * 0.1, work


def test_invalid_rows_are_not_listed_as_a_model(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.jsonl", [chat_row(0), b"{not json", chat_row(2)])
    out = tmp_path / "out"
    with SimProcess() as sim:
        done = runner_cli(
            "run", str(spec), "--out", str(out), "--provider", "openai",
            "--base-url", sim.root + "/v1", "--no-progress",
        )  # fmt: skip
    assert done.returncode == 1, done.stderr  # a failed (invalid) row
    data = orjson.loads(runner_cli("status", str(out), "--json").stdout)
    models = data["cost"]["by_model"]
    assert "(none)" not in models
    assert models[NO_MODEL]["failed"] == 1
    assert "(invalid rows: no model)" in runner_cli("status", str(out)).stdout


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_server_gone_mid_job_stops_it_after_a_minute_of_misses_only() -> None:
    clock = FakeClock()
    health = ServerHealth("http://user:pw@gpu-box:8000/v1", clock=clock)
    health.answered()
    for _ in range(GONE_MISSES * 2):  # a server restarting: misses, but not for long
        health.missed("refused", "connection refused")
    clock.now += GONE_SECONDS / 2
    health.answered()  # it came back
    clock.now += GONE_SECONDS + 1
    for _ in range(GONE_MISSES - 1):
        health.missed("refused", "connection refused")
    with pytest.raises(TransportFatal) as caught:
        health.missed("refused", "connection refused")
    assert "http://gpu-box:8000/v1" in str(caught.value)
    assert "pw" not in str(caught.value)  # credentials in the URL are not shown
