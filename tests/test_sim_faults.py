"""The simulator's limits and faults: tiers, rates, balance, auth, markers, drops, stalls."""

from __future__ import annotations

import ssl
import time
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest

from runner.sim import SimConfig, Simulator

if TYPE_CHECKING:
    from conftest import ZaiSpec

pytestmark = pytest.mark.anyio

KEY = "9e8d7c6b5a4f.another-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}


def chat_body(text: str = "Hello there.", model: str = "glm-4.6", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


# Building an SSL context loads the CA bundle (tens of ms); share one for loopback.
TLS = ssl.create_default_context()


def client_for(sim: Simulator, timeout: float = 10) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=200)
    return httpx.AsyncClient(
        base_url=sim.base_url + "/", timeout=timeout, limits=limits, verify=TLS
    )


async def chat(
    client: httpx.AsyncClient, body: dict[str, Any] | None = None, key: str = KEY
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return await client.post("chat/completions", json=body or chat_body(), headers=headers)


async def fire(
    client: httpx.AsyncClient, count: int, body: dict[str, Any] | None = None, key: str = KEY
) -> list[httpx.Response]:
    """``count`` requests at once; responses in completion order."""
    responses: list[httpx.Response] = []

    async def one() -> None:
        responses.append(await chat(client, body, key))

    async with anyio.create_task_group() as group:
        for _ in range(count):
            group.start_soon(one)
    return responses


def codes(responses: list[httpx.Response]) -> list[str]:
    return sorted(
        "200" if r.status_code == 200 else str(r.json()["error"]["code"]) for r in responses
    )


async def test_concurrency_tier_refuses_the_excess_at_once() -> None:
    async with Simulator(SimConfig(latency=0.4, concurrency_limit=3)) as sim:
        async with client_for(sim) as client:
            started = time.monotonic()
            rejected_at: list[float] = []

            async def one(results: list[httpx.Response]) -> None:
                response = await chat(client)
                if response.status_code == 429:
                    rejected_at.append(time.monotonic() - started)
                results.append(response)

            results: list[httpx.Response] = []
            async with anyio.create_task_group() as group:
                for _ in range(7):
                    group.start_soon(one, results)
        stats = sim.stats()
    assert codes(results) == ["1302"] * 4 + ["200"] * 3
    assert all(r.status_code == 429 for r in results if r.status_code != 200)
    assert max(rejected_at) < 0.3  # refused immediately, not queued behind the slot
    (per_model,) = stats["peak_concurrency"].values()
    assert per_model == {"glm-4.6": 3}
    assert stats["faults"]["1302"] == 4
    assert stats["billed"]["requests"] == 3


async def test_limits_are_per_key_and_per_model_with_overrides() -> None:
    other = "0a0b0c0d0e0f.third-secret"
    config = SimConfig(
        latency=0.3,
        concurrency_limit=2,
        model_limits={"embedding-3": 1},
        keys={KEY: None, other: 4},
    )
    results: dict[str, list[httpx.Response]] = {}

    async def batch(client: httpx.AsyncClient, name: str, body: dict[str, Any], key: str) -> None:
        results[name] = await fire(client, 5, body, key)

    async with (
        Simulator(config) as sim,
        client_for(sim) as client,
        anyio.create_task_group() as group,
    ):
        group.start_soon(batch, client, "default", chat_body(), KEY)
        group.start_soon(batch, client, "model", chat_body(model="embedding-3"), KEY)
        group.start_soon(batch, client, "key", chat_body(), other)
    assert codes(results["default"]).count("200") == 2
    assert codes(results["model"]).count("200") == 1
    assert codes(results["key"]).count("200") == 4


async def test_rpm_limit_gives_1303() -> None:
    async with Simulator(SimConfig(rpm_limit=5)) as sim, client_for(sim) as client:
        responses = [await chat(client) for _ in range(7)]
        other_key = await chat(client, key="someone-else")
    assert codes(responses) == ["1303", "1303"] + ["200"] * 5
    assert responses[-1].status_code == 429
    assert other_key.status_code == 200
    assert sim.stats()["faults"]["1303"] == 2


async def test_balance_runs_out_after_n_billed_even_under_concurrency() -> None:
    async with Simulator(SimConfig(balance_requests=3, latency=0.1)) as sim:
        async with client_for(sim) as client:
            responses = await fire(client, 10)
            later = await chat(client)
        stats = sim.stats()
    assert codes(responses) == ["1113"] * 7 + ["200"] * 3
    assert later.status_code == 429 and later.json()["error"]["code"] == "1113"
    assert "recharge" in later.json()["error"]["message"]
    assert stats["billed"]["requests"] == 3


async def test_authentication_errors() -> None:
    async with Simulator(SimConfig(keys={KEY: None})) as sim, client_for(sim) as client:
        missing = await client.post("chat/completions", json=chat_body())
        empty = await client.post(
            "chat/completions", json=chat_body(), headers={"Authorization": "Bearer"}
        )
        wrong = await chat(client, key="not-a-key")
        good = await chat(client)
    assert missing.status_code == empty.status_code == wrong.status_code == 401
    assert missing.json()["error"]["code"] == empty.json()["error"]["code"] == "1001"
    assert wrong.json()["error"] == {"code": "1002", "message": "Authorization Token is invalid"}
    assert good.status_code == 200


@pytest.mark.parametrize(
    ("marker", "status"),
    [
        ("1301", 400),
        ("1214", 400),
        ("1261", 400),
        ("1210", 400),
        ("1302", 429),
        ("1303", 429),
        ("1305", 429),
        ("1113", 429),
        ("1000", 401),
        ("1004", 401),
        ("500", 500),
    ],
)
async def test_markers_force_business_errors(sim: Simulator, marker: str, status: int) -> None:
    async with client_for(sim) as client:
        response = await chat(client, chat_body(f"please [[sim:{marker}]] now"))
    assert response.status_code == status
    assert response.json()["error"]["code"] == marker
    assert sim.stats()["faults"]["marker"] == 1
    assert sim.stats()["billed"]["requests"] == 0


async def test_sensitive_and_task_fail_markers(sim: Simulator) -> None:
    async with client_for(sim) as client:
        sensitive = await chat(client, chat_body("say [[sim:sensitive]]"))
        submit = await client.post(
            "videos/generations",
            json={"model": "cogvideox-3", "prompt": "a [[sim:task-fail]] video"},
            headers=AUTH,
        )
        with anyio.fail_after(5):
            while True:
                polled = await client.get(f"async-result/{submit.json()['id']}", headers=AUTH)
                if polled.json()["task_status"] != "PROCESSING":
                    break
                await anyio.sleep(0.05)
    assert sensitive.status_code == 200
    assert sensitive.json()["choices"][0]["finish_reason"] == "sensitive"
    assert polled.json()["task_status"] == "FAIL"
    stats = sim.stats()
    assert stats["tasks"]["failed"] == 1 and stats["billed"]["videos"] == 0


async def test_random_fault_rates_are_roughly_right() -> None:
    config = SimConfig(rate_429=0.3, rate_500=0.1, rate_503=0.1, seed=11)
    async with Simulator(config) as sim, client_for(sim) as client:
        responses = [await chat(client) for _ in range(400)]
        statuses = [r.status_code for r in responses]
        stats = sim.stats()
    assert 90 <= statuses.count(429) <= 150
    assert 20 <= statuses.count(500) <= 60
    assert 20 <= statuses.count(503) <= 60
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 429} == {"1305"}
    assert stats["faults"]["429"] == statuses.count(429)
    assert stats["billed"]["requests"] == statuses.count(200)


async def test_drop_is_a_transport_error_and_not_billed() -> None:
    async with Simulator(SimConfig(rate_drop=1.0)) as sim, client_for(sim) as client:
        with pytest.raises(httpx.TransportError):
            await chat(client)
        sim.update(rate_drop=0.0)
        assert (await chat(client)).status_code == 200
        stats = sim.stats()
    assert stats["faults"]["drop"] == 1
    assert stats["billed"]["requests"] == 1
    assert stats["in_flight"] == 0


async def test_stall_holds_the_answer_past_the_client_timeout() -> None:
    async with Simulator(SimConfig(rate_stall=1.0, stall_seconds=0.5)) as sim:
        async with client_for(sim, timeout=0.15) as impatient:
            with pytest.raises(httpx.ReadTimeout):
                await chat(impatient)
        async with client_for(sim) as patient:
            started = time.monotonic()
            response = await chat(patient)
            waited = time.monotonic() - started
        assert sim.stats()["faults"]["stall"] == 2
    assert response.status_code == 200
    assert waited >= 0.5


async def test_result_urls_expire_and_each_poll_issues_fresh_ones() -> None:
    async with Simulator(SimConfig(task_seconds=0.0, url_ttl=0.3)) as sim:
        async with client_for(sim) as client:
            submit = await client.post(
                "videos/generations", json={"model": "cogvideox-3", "prompt": "x"}, headers=AUTH
            )
            path = f"async-result/{submit.json()['id']}"
            first = (await client.get(path, headers=AUTH)).json()["video_result"][0]["url"]
            fresh = await client.get(first)
            await anyio.sleep(0.4)
            expired = await client.get(first)
            second = (await client.get(path, headers=AUTH)).json()["video_result"][0]["url"]
            renewed = await client.get(second)
            forged = await client.get(second.replace("sig=", "sig=0"))
        stats = sim.stats()
    assert fresh.status_code == 200 and renewed.status_code == 200
    assert second != first
    assert expired.status_code == 403 and "expired" in expired.json()["error"]["message"]
    assert forged.status_code == 403
    assert stats["downloads"] == 2 and stats["faults"]["expired"] == 1


async def test_error_shapes(zai_spec: ZaiSpec) -> None:
    config = SimConfig(error_shape="flat", keys={KEY: None})
    async with Simulator(config) as sim, client_for(sim) as client:
        flat = [
            await chat(client, chat_body("[[sim:1302]]")),
            await chat(client, key="wrong"),
            await client.get("async-result/missing", headers=AUTH),
            await chat(client, {"model": "glm-4.6", "messages": []}),
        ]
        sim.update(error_shape="nested")
        nested = await chat(client, chat_body("[[sim:1302]]"))
    for response in flat:
        zai_spec.validate(response.json(), "Error")
    assert flat[0].json() == {
        "code": 1302,
        "message": "High concurrency usage of this API, please reduce concurrency or "
        "contact customer service to increase limits",
    }
    assert nested.json()["error"]["code"] == "1302"
    assert nested.json()["error"]["message"] == flat[0].json()["message"]


async def test_runtime_config_over_http_and_reset() -> None:
    async with Simulator(SimConfig()) as sim, httpx.AsyncClient(base_url=sim.root_url) as client:
        api = "/api/paas/v4/chat/completions"
        assert (await client.post(api, json=chat_body(), headers=AUTH)).status_code == 200
        update = await client.post("/_sim/config", json={"balance_requests": 1, "rate_429": 0})
        assert update.status_code == 200 and update.json()["balance_requests"] == 1
        refused = await client.post(api, json=chat_body(), headers=AUTH)
        assert refused.json()["error"]["code"] == "1113"
        bad = await client.post("/_sim/config", json={"rate_429": 2})
        unknown = await client.post("/_sim/config", json={"nope": 1})
        assert bad.status_code == unknown.status_code == 400
        assert (await client.post("/_sim/reset")).json() == {"ok": True}
        stats = (await client.get("/_sim/stats")).json()
        assert stats["requests"] == {} and stats["billed"]["requests"] == 0
        # Reset also refills the balance: the account starts over.
        assert (await client.post(api, json=chat_body(), headers=AUTH)).status_code == 200
        with pytest.raises(ValueError, match="latency"):
            sim.update(latency=-1)


async def test_lognormal_latency_has_the_configured_mean() -> None:
    config = SimConfig(latency=0.05, latency_dist="lognormal", latency_sigma=0.5, seed=3)
    async with Simulator(config) as sim, client_for(sim) as client:
        started = time.monotonic()
        await fire(client, 50)
        elapsed = time.monotonic() - started
        draws = [sim.state.gate.latency() for _ in range(4000)]
    assert 0.045 <= sum(draws) / len(draws) <= 0.055
    assert len(set(draws)) > 100
    assert elapsed < 1.0  # concurrent requests overlap their latency
