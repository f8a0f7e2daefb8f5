"""Providers as data: each error table against the simulator, user providers, RPM/TPM buckets."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import anyio
import orjson
import pytest

from jobs import settings_for, write_spec
from runner import Settings, UsageError, accounts, run_job
from runner.endpoints import raise_for_answer
from runner.errors import FatalAPIError, RateLimited, RetryableError, RowError, Verdict, classify
from runner.http import Response
from runner.job import checkpoint_path
from runner.providers import get_provider, load_providers
from runner.ratelimit import FILE_TOKENS, RateLimiter, RateLimits, TokenBucket, estimate_tokens
from runner.sim import SimConfig, Simulator
from runner.store import Store


def sf_spec(path: Path, texts: list[str], model: str = "zai-org/GLM-4.5-Air") -> Path:
    """A SiliconFlow-style spec: one chat row per text, on the /v1 path."""
    return write_spec(
        path,
        (
            {
                "custom_id": f"r{i}",
                "url": "/v1/chat/completions",
                "body": {"model": model, "messages": [{"role": "user", "content": t}]},
            }
            for i, t in enumerate(texts)
        ),
    )


def sf_settings(tmp_path: Path, spec: Path, base_url: str, **kw: Any) -> Settings:
    return settings_for(
        tmp_path / "out", spec, base_url, **{"provider": "siliconflow", "concurrency": 4, **kw}
    )


def errors_by_row(out: Path) -> dict[str, tuple[str, str | None, int | None]]:
    store = Store(checkpoint_path(out))
    try:
        return {
            r["custom_id"]: (r["status"], r["error_code"], r["http_status"])
            for chunk in store.iter_rows()
            for r in chunk
        }
    finally:
        store.close()


# --- the classifier ----------------------------------------------------------------------


def test_each_shape_reads_its_own_code_table() -> None:
    # A Zhipu code means something only to Zhipu: the same number from SiliconFlow is
    # classified by its HTTP status.
    assert classify(400, "1302") is Verdict.RATE_LIMIT
    assert classify(400, "1302", shape="siliconflow") is Verdict.FAIL_ROW
    assert classify(429, "1113") is Verdict.STOP_JOB
    assert classify(429, "1113", shape="siliconflow") is Verdict.RATE_LIMIT
    assert classify(400, "20012", shape="siliconflow") is Verdict.FAIL_ROW
    sf_balance = get_provider("siliconflow").balance_statuses
    assert classify(403, "30001", balance_statuses=sf_balance, shape="siliconflow") is (
        Verdict.STOP_JOB
    )
    for status in (429, 503, 504, 500):
        assert classify(status, str(status), shape="siliconflow") in (
            Verdict.RATE_LIMIT,
            Verdict.RETRY,
        )
    # OpenAI: insufficient_quota arrives as a 429 but is the balance, like 1113.
    assert classify(429, "insufficient_quota", shape="openai") is Verdict.STOP_JOB
    assert classify(429, "rate_limit_exceeded", shape="openai") is Verdict.RATE_LIMIT
    assert classify(404, "model_not_found", shape="openai") is Verdict.FAIL_ROW


def _resp(status: int, body: dict[str, Any]) -> Response:
    return Response(status, [], orjson.dumps(body))


def test_raise_for_answer_guesses_siliconflow_from_the_flat_body() -> None:
    flat = {"code": 1113, "message": "x", "data": None}  # a SiliconFlow body with a Zhipu number
    with pytest.raises(RateLimited):
        raise_for_answer(_resp(429, flat))
    with pytest.raises(FatalAPIError):
        raise_for_answer(_resp(429, {"code": 1113, "message": "balance"}))  # Zhipu's flat form
    with pytest.raises(RowError) as row:
        raise_for_answer(_resp(400, {"code": 20012, "message": "no model", "data": None}))
    assert row.value.code == "20012"
    with pytest.raises(FatalAPIError):
        raise_for_answer(
            _resp(403, {"code": 403, "message": "no money", "data": None}),
            balance_statuses=frozenset({403}),
            error_shape="siliconflow",
        )
    with pytest.raises(RetryableError):
        raise_for_answer(_resp(503, {"code": 503, "message": "busy", "data": None}))


# --- SiliconFlow against the simulator --------------------------------------------------


@pytest.mark.anyio
async def test_siliconflow_403_balance_stops_the_job(tmp_path: Path) -> None:
    spec = sf_spec(tmp_path / "s.jsonl", [f"q {i}" for i in range(30)])
    cfg = SimConfig(error_shape="siliconflow", balance_requests=5)
    async with Simulator(cfg) as sim:
        result = await run_job(
            sf_settings(tmp_path, spec, sim.base_url, concurrency=1), handle_signals=False
        )
        stats = sim.stats()
    assert result.exit_code == 3, result.message
    assert "recharge" in result.message.lower() or "top up" in result.message.lower()
    assert "HTTP 403" in result.message
    assert stats["statuses"].get("403", 0) >= 1
    assert result.summary["succeeded"] == 5 and result.summary["pending"] == 25


@pytest.mark.anyio
async def test_siliconflow_429_and_503_retry_and_400_fails_the_row(tmp_path: Path) -> None:
    texts = [f"q {i}" for i in range(60)]
    texts[3] = "bad parameter [[sim:1214]]"
    texts[4] = "unknown model [[sim:1211]]"
    spec = sf_spec(tmp_path / "s.jsonl", texts)
    cfg = SimConfig(error_shape="siliconflow", rate_429=0.2, rate_503=0.1, seed=3)
    async with Simulator(cfg) as sim:
        result = await run_job(sf_settings(tmp_path, spec, sim.base_url), handle_signals=False)
        stats = sim.stats()
    assert stats["faults"]["429"] > 0 and stats["faults"]["503"] > 0
    assert result.exit_code == 1, result.message
    rows = errors_by_row(tmp_path / "out")
    assert rows["r3"] == ("failed", "400", 400)
    assert rows["r4"] == ("failed", "20012", 400)
    assert sum(r[0] == "succeeded" for r in rows.values()) == 58


# --- user providers ---------------------------------------------------------------------


def test_providers_file_adds_and_extends(tmp_path: Path) -> None:
    path = tmp_path / "providers.toml"
    path.write_text(
        "[providers.myflow]\n"
        'extends = "siliconflow"\n'
        'base_url = "http://127.0.0.1:9/v1"\n'
        'key_env = "MYFLOW_KEY"\n'
        "rpm = 120\n"
        "[providers.plain]\n"
        'key_env = "PLAIN_KEY"\n'
        'currency = "EUR"\n'
        'error_shape = "openai"\n'
        "balance_statuses = [402]\n"
        "[providers.plain.extra_headers]\n"
        'X-Team = "ml"\n'
    )
    table = load_providers(path)
    assert {"zai", "zhipu", "siliconflow", "openai", "myflow", "plain"} <= set(table)
    mine = get_provider("myflow", path)
    assert (mine.error_shape, mine.balance_statuses, mine.rpm) == ("siliconflow", {403}, 120)
    assert mine.batch_url_prefix == "/v1/" and mine.key_env == "MYFLOW_KEY"
    plain = get_provider("plain", path)
    assert plain.balance_statuses == {402} and dict(plain.extra_headers) == {"X-Team": "ml"}
    s = Settings(spec=path, out=tmp_path, provider="myflow", providers_file=path)
    assert s.provider_info.name == "myflow"
    assert s.with_key_from_env({"MYFLOW_KEY": "k"}).api_key.reveal() == "k"
    assert RateLimits.from_settings(s) is not None

    bad = tmp_path / "bad.toml"
    bad.write_text('[providers.x]\nkey_env = "K"\ncurrency = "USD"\ncolour = "red"\n')
    with pytest.raises(UsageError, match="colour"):
        load_providers(bad)
    with pytest.raises(UsageError, match="unknown provider"):
        get_provider("nope", path)


def test_cli_takes_a_provider_from_the_env_file(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from runner.cli import cli

    providers = tmp_path / "p.toml"
    providers.write_text('[providers.mine]\nextends = "openai"\nkey_env = "MINE_KEY"\n')
    spec = sf_spec(tmp_path / "s.jsonl", ["hi"])
    args = ["run", str(spec), "--out", str(tmp_path / "o"), "--provider", "mine"]
    r = CliRunner().invoke(cli, args, env={"RUNNER_PROVIDERS": str(providers)})
    assert r.exit_code == 2 and "MINE_KEY" in r.output  # known provider, key missing
    r = CliRunner().invoke(cli, [*args[:-1], "other"], env={"RUNNER_PROVIDERS": str(providers)})
    assert r.exit_code == 2 and "unknown provider" in r.output


# --- RPM / TPM buckets ------------------------------------------------------------------


class FakeClock:
    """Virtual time: sleeping advances the clock, so bucket tests take no real time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.mark.anyio
async def test_rpm_bucket_never_passes_the_limit_in_any_minute() -> None:
    clock = FakeClock()
    bucket = TokenBucket(600, clock=clock, sleep=clock.sleep)
    stamps = []
    for _ in range(2000):
        await bucket.acquire(1)
        stamps.append(clock.now)
    # Sliding 60 s windows: never more than the limit.
    j = 0
    for i, t in enumerate(stamps):
        while stamps[j] <= t - 60.0:
            j += 1
        assert i - j + 1 <= 600
    # And the long-run rate is close to it: 2000 requests at ~590/min.
    assert 190 < stamps[-1] < 210


@pytest.mark.anyio
async def test_tpm_bucket_lets_a_large_request_through_and_charges_it() -> None:
    clock = FakeClock()
    limiter = RateLimiter(None, 6000, clock=clock, sleep=clock.sleep)
    assert limiter.tokens is not None and limiter.tokens.burst == 100
    await limiter.acquire(50)  # within the burst: no wait
    assert clock.now == 0.0
    await limiter.acquire(3000)  # larger than the burst: waits for a full bucket, then debt
    t1 = clock.now
    await limiter.acquire(10)  # pays back the debt first
    per_second = (6000 - 100) / 60
    assert clock.now - t1 == pytest.approx((3000 - 50 + 10) / per_second, rel=0.05)
    limiter.refund(10_000)  # refunds never fill past the burst
    assert limiter.tokens.wait_time(100) == 0.0


@pytest.mark.anyio
async def test_rate_limits_are_per_model_and_served_in_order() -> None:
    clock = FakeClock()
    limits = RateLimits(60, None, clock=clock, sleep=clock.sleep)
    order: list[str] = []

    async def one(model: str, tag: str) -> None:
        await limits.acquire(model, 1)
        order.append(tag)

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(one, "a", f"a{i}")
        tg.start_soon(one, "b", "b0")
    assert order.index("b0") < order.index("a1")  # model b has its own bucket
    assert [t for t in order if t[0] == "a"] == ["a0", "a1", "a2", "a3"]
    assert clock.now == pytest.approx(3 * 60 / 59, rel=0.01)


def test_token_estimate() -> None:
    body = orjson.dumps({"messages": [{"role": "user", "content": "x" * 300}], "max_tokens": 50})
    assert estimate_tokens(body) == len(body) // 3 + 50
    assert estimate_tokens(body, 7) == len(body) // 3 + 7
    assert estimate_tokens(b'{"messages": []}') == 16 // 3 + 1024
    # An inlined image counts as an image, not as megabytes of base64 text.
    uri = "data:image/png;base64," + "QUJD" * 500_000
    part = {"type": "image_url", "image_url": {"url": uri}}
    image = orjson.dumps({"messages": [{"role": "user", "content": [part]}], "max_tokens": 5})
    assert estimate_tokens(image) == (len(image) - len(uri)) // 3 + FILE_TOKENS + 5
    assert RateLimits.from_settings(Settings(spec=Path("x"), out=Path("y"))) is None
    s = Settings(spec=Path("x"), out=Path("y"), provider="siliconflow", rpm=100, tpm=1000)
    limits = RateLimits.from_settings(s)
    assert limits is not None and (limits.rpm, limits.tpm) == (100, 1000)


class _RecordingLimits(RateLimits):
    """The job's real buckets, noting each correction the pool makes after an answer."""

    refunds: ClassVar[list[tuple[str, int]]] = []

    def refund(self, model: str, tokens: int) -> None:
        self.refunds.append((model, tokens))
        super().refund(model, tokens)


@pytest.mark.anyio
async def test_tpm_bucket_is_corrected_to_each_answers_real_usage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [f"question {i}" for i in range(12)]
    spec = sf_spec(tmp_path / "s.jsonl", texts)
    # Each key's buckets are built by its account: record what the pool refunds them.
    monkeypatch.setattr(accounts, "RateLimits", _RecordingLimits)
    _RecordingLimits.refunds = []
    limits = _RecordingLimits

    async with Simulator(SimConfig(error_shape="siliconflow")) as sim:
        settings = sf_settings(tmp_path, spec, sim.base_url, tpm=600_000)
        result = await run_job(settings, handle_signals=False)
    assert result.exit_code == 0, result.message
    store = Store(checkpoint_path(tmp_path / "out"))
    try:
        used = {r["custom_id"]: r["total_tokens"] for chunk in store.iter_rows() for r in chunk}
    finally:
        store.close()
    # One correction per answer: the estimate (no max_tokens: the default output) less
    # the tokens the answer reports, so the bucket follows what the platform counted.
    assert len(limits.refunds) == len(texts)
    lines = spec.read_bytes().splitlines()
    expected = sorted(
        estimate_tokens(orjson.dumps(orjson.loads(line)["body"])) - used[f"r{i}"]
        for i, line in enumerate(lines)
    )
    assert sorted(n for _, n in limits.refunds) == expected
    assert all(model == "zai-org/GLM-4.5-Air" and n > 0 for model, n in limits.refunds)
