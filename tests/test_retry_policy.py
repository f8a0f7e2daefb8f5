"""The retry budget the README promises, and Retry-After from the first retry on."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from transport_servers import Origin, Reply, Seen, ServerThread, reply

from runner import RetryConfig, Settings, run_job
from runner.settings import Secret
from runner.sim import SimConfig, Simulator

pytestmark = pytest.mark.anyio

README = Path(__file__).resolve().parents[1] / "README.md"
CHAT = {"model": "glm-4.5-air", "messages": [{"role": "user", "content": "hi"}]}
ANSWER = orjson.dumps(
    {
        "id": "x",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
)  # fmt: skip


def spec(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "spec.jsonl"
    rows = [{"custom_id": f"r{i}", "url": "/v4/chat/completions", "body": CHAT} for i in range(n)]
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def settings(tmp_path: Path, base_url: str, n: int, retry: RetryConfig) -> Settings:
    return Settings(
        spec=spec(tmp_path, n), out=tmp_path / "out", base_url=base_url,
        api_key=Secret("retry-test-key"), concurrency=4, progress=False, retry=retry,
    )  # fmt: skip


@pytest.fixture
def servers() -> Iterator[ServerThread]:
    st = ServerThread()
    yield st
    st.close()


def readme_attempts() -> int:
    found = re.search(r"\| transient \|[^|]*\| up to (\d+) attempts \|", README.read_text())
    assert found, "the README's retry table lost its transient row"
    return int(found.group(1))


@pytest.mark.parametrize("fault", ["rate_500", "rate_drop"])
async def test_a_chat_row_is_sent_at_most_as_often_as_the_readme_says(
    tmp_path: Path, fault: str
) -> None:
    promised = readme_attempts()
    assert RetryConfig().max_attempts == promised
    async with Simulator(SimConfig(**{fault: 1.0})) as sim:
        result = await run_job(
            settings(tmp_path, sim.base_url, 3, RetryConfig(testing=True)), handle_signals=False
        )
        sent = sim.stats()["requests"]
    assert result.summary["failed"] == 3
    assert sum(sent.values()) == 3 * promised, sent
    errors = result.summary["errors"]
    assert f"gave up after {promised} attempts" in errors[0]["message"]


@pytest.mark.parametrize("status", [503, 429])
async def test_the_first_retry_honours_retry_after(
    tmp_path: Path, servers: ServerThread, status: int
) -> None:
    def handler(seen: Seen) -> Reply:
        if len(origin.seen) == 1:
            body = (
                b'{"error": {"code": "1302", "message": "slow down"}}' if status == 429 else b"{}"
            )
            return reply(status, body, headers={"Retry-After": "1"})
        return reply(body=ANSWER)

    origin = servers.serve(Origin(handler))
    retry = RetryConfig(initial_wait=0.01, jitter=0.0, max_wait=5.0)
    result = await run_job(settings(tmp_path, origin.url + "/v4", 1, retry), handle_signals=False)
    assert result.exit_code == 0, result.message
    assert len(origin.seen) == 2
    assert origin.seen[1].at - origin.seen[0].at >= 0.95
