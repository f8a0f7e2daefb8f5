"""--notify: one message per event to a webhook on loopback, from real `runner run` processes
against the simulator; the chat apps' formats and signatures; a webhook that is down."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, quote_plus, urlsplit

import anyio
import orjson
import pytest
from hooks import Receiver
from simproc import SimProcess

from runner import RetryConfig, Settings, run_job
from runner.errors import BudgetExceeded, FatalAPIError, Interrupted, UsageError
from runner.notify import FailureWatch, parse_target, text
from runner.notify.messages import ended

KEY = "notify-test-key-0d9a7c41"
ROOT = Path(__file__).resolve().parents[1]


def write_spec(path: Path, n: int) -> Path:
    with path.open("wb") as f:
        for i in range(n):
            body = {"model": "glm-4.5-air", "messages": [{"role": "user", "content": f"q{i}"}]}
            f.write(orjson.dumps({"custom_id": f"r{i}", "body": body}) + b"\n")
    return path


def runner(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "ZAI_API_KEY": KEY, **(env or {})},
    )  # fmt: skip


def status(out: Path) -> dict:
    r = runner("status", str(out), "--json")
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def test_a_clean_job_sends_one_finished_message(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.jsonl", 60)
    out = tmp_path / "out"
    with SimProcess("--latency", "0.01") as sim, Receiver() as hook:
        r = runner(
            "run", str(spec), "--out", str(out), "--base-url", sim.base_url,
            "--no-progress", "--notify", hook.url,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
    assert len(hook.posts) == 1
    (event,) = hook.events()
    s = status(out)
    assert event["event"] == "finished"
    assert (event["succeeded"], event["failed"], event["pending"]) == (60, 0, 0)
    assert event["cost"] == s["cost"]["total"] and event["cost"] > 0
    assert event["cost_exact"] == s["cost"]["total_exact"]
    assert event["job"] and event["results"] == str(out / "results.parquet")
    assert "reason" not in event and event["wall_s"] >= 0
    assert KEY not in hook.posts[0][1].decode()
    assert "q1" not in hook.posts[0][1].decode()  # no prompt
    # The delivery is on record for `runner status`.
    notes = json.loads((out / "notifications.json").read_text())
    assert [(n["event"], n["delivered"]) for n in notes] == [("finished", True)]


def test_a_budget_stop_sends_one_stopped_message_with_the_reason(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.jsonl", 200)
    out = tmp_path / "out"
    with SimProcess("--latency", "0.01") as sim, Receiver() as hook:
        r = runner(
            "run", str(spec), "--out", str(out), "--base-url", sim.base_url, "--no-progress",
            "--concurrency", "4", "--max-cost", "0.0001", "--notify", hook.url,
        )  # fmt: skip
        assert r.returncode == 3, r.stderr
    (event,) = hook.events()
    assert len(hook.posts) == 1
    assert event["event"] == "stopped" and event["reason"] == "max_cost"
    assert event["pending"] > 0 and event["succeeded"] == status(out)["succeeded"]
    assert "--max-cost" in event["next"] and "max-cost" in event["message"]
    assert KEY not in hook.posts[0][1].decode()


def test_arrears_send_one_stopped_message_without_the_key(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.jsonl", 100)
    out = tmp_path / "out"
    with SimProcess("--latency", "0.01", "--balance-requests", "30") as sim, Receiver() as hook:
        r = runner(
            "run", str(spec), "--out", str(out), "--base-url", sim.base_url, "--no-progress",
            "--concurrency", "4", "--notify", hook.url,
        )  # fmt: skip
        assert r.returncode == 3, r.stderr
    assert len(hook.posts) == 1
    (event,) = hook.events()
    assert event["event"] == "stopped" and event["reason"] == "arrears"
    assert event["next"].endswith(f"runner resume {out}")
    assert event["succeeded"] == status(out)["succeeded"] >= 30
    assert KEY not in hook.posts[0][1].decode()


def test_a_webhook_that_is_down_warns_once_and_leaves_the_job_alone(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.jsonl", 20)
    out = tmp_path / "out"
    with SimProcess() as sim, Receiver(status=503, answer=b"down") as hook:
        settings = Settings(
            spec=spec, out=out, base_url=sim.base_url, progress=False,
            notify=(hook.url,), retry=RetryConfig(testing=True),
        ).with_key_from_env({"ZAI_API_KEY": KEY})  # fmt: skip
        result = anyio.run(lambda: run_job(settings, handle_signals=False))
    assert result.exit_code == 0
    assert len(hook.posts) == 4  # the attempts, then it gives up
    notes = json.loads((out / "notifications.json").read_text())
    assert notes[-1]["delivered"] is False and "503" in notes[-1]["error"]
    assert "secret-token" not in notes[-1]["target"]  # the URL's token is never shown
    r = runner("status", str(out))
    assert "could not notify 127.0.0.1" in r.stdout


@pytest.mark.parametrize("kind", ["slack", "feishu", "dingtalk", "wecom"])
def test_each_chat_app_gets_its_own_format(kind: str) -> None:
    secret = "SEC-test-secret"
    env = {"RUNNER_FEISHU_SECRET": secret, "RUNNER_DINGTALK_SECRET": secret}
    target = parse_target(f"{kind}:https://hooks.example/robot/send?access_token=tok")
    event = ended(
        job="j1", out=Path("/data/out"), spec=Path("spec.jsonl"),
        summary={"total": 10, "succeeded": 9, "failed": 1, "pending": 0, "cost_nano": 5},
        currency="CNY", wall_s=3.0, reason=None, message="finished", results=None,
    )  # fmt: skip
    url, raw = target.request(event, text(event), env)
    body = json.loads(raw)
    if kind == "slack":
        assert body == {"text": text(event)}
    elif kind == "feishu":
        assert body["msg_type"] == "text" and "9 succeeded" in body["content"]["text"]
        key = f"{body['timestamp']}\n{secret}".encode()
        want = base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
        assert body["sign"] == want
    else:
        assert body["msgtype"] == "text" and "9 succeeded" in body["text"]["content"]
    if kind == "dingtalk":
        q = parse_qs(urlsplit(url).query)
        stamp, sign = q["timestamp"][0], q["sign"][0]
        digest = hmac.new(secret.encode(), f"{stamp}\n{secret}".encode(), hashlib.sha256)
        want = base64.b64encode(digest.digest()).decode()
        assert sign == want and f"sign={quote_plus(want)}" in url  # URL-encoded: + / =
        assert q["access_token"] == ["tok"]
    else:
        assert url == "https://hooks.example/robot/send?access_token=tok"
    assert secret not in raw.decode()
    assert target.name == f"{kind}:hooks.example"


def test_an_app_error_in_a_200_answer_is_a_failure() -> None:
    target = parse_target("feishu:https://open.feishu.example/hook/x")
    assert target.accepted(200, b'{"code": 19021, "msg": "sign match fail"}') is not None
    assert target.accepted(200, b'{"code": 0, "msg": "success"}') is None
    with pytest.raises(UsageError):
        parse_target("slack:not-a-url")


def test_stop_reasons_are_named_for_scripts() -> None:
    from runner.notify import stop_kind

    assert stop_kind(Interrupted("stopped by SIGTERM"), 5) == "signal"
    assert stop_kind(BudgetExceeded("x"), 5) == "max_cost"
    assert stop_kind(FatalAPIError("arrears", code="1113"), 5) == "arrears"
    assert stop_kind(FatalAPIError("every key is retired (...)", code="1113"), 5) == (
        "keys_retired"
    )
    assert stop_kind(None, 3) == "pending" and stop_kind(None, 0) is None


def test_a_rising_failure_rate_alerts_at_most_once_an_hour() -> None:
    w = FailureWatch(window=300, min_rows=50, threshold=0.2)
    t, done, failed = 0.0, 1_000_000, 1_000  # a long healthy past: 0.1 % failed
    alerts = []
    for _ in range(240):  # then half the rows fail, for two hours
        t, done, failed = t + 30, done + 100, failed + 50
        if (a := w.observe(t, done, failed)) is not None:
            alerts.append((t, a))
    assert len(alerts) == 2 and alerts[1][0] - alerts[0][0] >= 3600
    assert alerts[0][0] <= 300  # within one window of the change
    assert alerts[0][1]["share"] == 0.5 and alerts[0][1]["share_before"] < 0.01


def test_a_steady_share_of_failures_is_not_rising() -> None:
    w = FailureWatch(window=300, min_rows=50, threshold=0.2)
    t, done, failed = 0.0, 0, 0
    for _ in range(240):  # every third row filtered by design, from the start
        t, done, failed = t + 30, done + 90, failed + 30
        assert w.observe(t, done, failed) is None


def test_a_job_file_and_generate_take_notify(tmp_path: Path) -> None:
    import runner as lib

    write_spec(tmp_path / "spec.jsonl", 10)
    with SimProcess() as sim, Receiver() as hook:
        job = tmp_path / "job.toml"
        job.write_text(
            f'spec = "spec.jsonl"\nout = "out"\nbase_url = "{sim.base_url}"\n'
            f'notify = ["{hook.url}"]\n'
        )
        r = runner("run", str(job), "--no-progress")
        assert r.returncode == 0, r.stderr
        os.environ["ZAI_API_KEY"] = KEY
        try:
            table = lib.generate(
                [{"topic": "a"}, {"topic": "b"}], prompt="About {topic}.", model="glm-4.5-air",
                out=tmp_path / "gen", base_url=sim.base_url, progress=False, cache=False,
                notify=[hook.url],
            )  # fmt: skip
        finally:
            del os.environ["ZAI_API_KEY"]
    assert table.num_rows == 2
    events = hook.events()
    assert [(e["event"], e["succeeded"]) for e in events] == [("finished", 10), ("finished", 2)]
    # The webhook (its token) is not kept in the checkpoint: a resume is given it again.
    assert b"secret-token" not in (tmp_path / "out" / "checkpoint.sqlite").read_bytes()
    assert "About a" not in hook.posts[1][1].decode()  # no prompt


def test_a_signal_stop_is_one_stopped_message(tmp_path: Path) -> None:
    import signal
    import time

    spec = write_spec(tmp_path / "spec.jsonl", 400)
    out = tmp_path / "out"
    with SimProcess("--latency", "0.1") as sim, Receiver() as hook:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "run", str(spec), "--out", str(out),
             "--base-url", sim.base_url, "--no-progress", "--concurrency", "4",
             "--notify", hook.url],
            env={**os.environ, "ZAI_API_KEY": KEY}, cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not (out / "checkpoint.sqlite").exists() or status(out)["succeeded"] < 10:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 3
    (event,) = hook.events()
    assert event["event"] == "stopped" and event["reason"] == "signal"
    assert event["next"] == f"runner resume {out}" and "SIGTERM" in event["message"]


def test_every_key_retired_is_one_stopped_message(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.jsonl", 100)
    out = tmp_path / "out"
    k1, k2 = KEY + "-one", KEY + "-two"
    args = ("--latency", "0.01", "--key-balance", f"{k1}=10", "--key-balance", f"{k2}=10")
    with SimProcess(*args) as sim, Receiver() as hook:
        r = runner(
            "run", str(spec), "--out", str(out), "--base-url", sim.base_url, "--no-progress",
            "--concurrency", "2", "--notify", hook.url, env={"ZAI_API_KEY": f"{k1},{k2}"},
        )  # fmt: skip
        assert r.returncode == 3, r.stderr
    (event,) = hook.events()
    assert event["event"] == "stopped" and event["reason"] == "keys_retired"
    raw = hook.posts[0][1].decode()
    assert k1 not in raw and k2 not in raw and KEY not in raw


def test_a_job_that_cannot_start_says_why(tmp_path: Path) -> None:
    """A resume refused before it sends (the spec changed) still tells the webhook."""
    spec = write_spec(tmp_path / "spec.jsonl", 5)
    out = tmp_path / "out"
    with SimProcess() as sim, Receiver() as hook:
        base = ("--out", str(out), "--base-url", sim.base_url, "--no-progress")
        assert runner("run", str(spec), *base).returncode == 0
        write_spec(spec, 6)  # a different spec in the same folder
        r = runner("run", str(spec), *base, "--notify", hook.url)
        assert r.returncode == 2, r.stderr
    (event,) = hook.events()
    assert event["event"] == "stopped" and event["reason"] == "error"
    assert "spec changed" in event["message"] and "fix what" in event["next"]
