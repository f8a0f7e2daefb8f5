"""``python -m runner.sim``: base URL first on stdout, options applied, clean exit on signals."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx
import pytest
from click.testing import CliRunner

from runner.sim import sim_command

KEY = "5c5c5c5c5c5c.cli-secret"


def start(*args: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "runner.sim", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_cli_serves_with_its_options_and_exits_zero(stop: signal.Signals) -> None:
    process, base_url = start(
        "--api-key", f"{KEY}:1", "--model-limit", "embedding-3=7", "--rpm", "100", "--seed", "4"
    )
    try:
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/api/paas/v4")
        body = {"model": "glm-4.6", "messages": [{"role": "user", "content": "hi"}]}
        ok = httpx.post(f"{base_url}/chat/completions", json=body, headers={"Authorization": KEY})
        root = base_url.removesuffix("/api/paas/v4")
        config = httpx.get(f"{root}/_sim/config").json()
    finally:
        process.send_signal(stop)
        _, stderr = process.communicate(timeout=10)
    assert ok.status_code == 200
    assert config["rpm_limit"] == 100 and config["seed"] == 4
    assert config["model_limits"] == {"embedding-3": 7}
    assert list(config["keys"].values()) == [1] and KEY not in str(config)
    assert process.returncode == 0, stderr


def test_cli_rejects_bad_values() -> None:
    result = CliRunner().invoke(sim_command, ["--rate-429", "1.5"])
    assert result.exit_code == 2
    assert "rate_429" in result.output
    result = CliRunner().invoke(sim_command, ["--model-limit", "glm-4.6"])
    assert result.exit_code == 2
