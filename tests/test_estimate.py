"""`runner estimate`: sane, labelled numbers without sending anything billable."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from runner.cli import cli
from runner.cost import load_prices
from runner.estimate import estimate_spec, transport_tokenizer
from runner.http import make_transport
from runner.sim import SimConfig, Simulator
from runner.spec import SpecDefaults

SAMPLES = Path(__file__).parents[1] / "samples"


def _max_tokens(path: Path, guess: int) -> tuple[int, int]:
    rows = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return len(rows), sum(r["body"].get("max_tokens", guess) for r in rows)


def test_estimate_chat_sample_is_labelled_and_free() -> None:
    r = CliRunner().invoke(cli, ["estimate", str(SAMPLES / "chat.jsonl")])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("ESTIMATE")
    assert "glm-4.7-flash" in r.output and "(free model)" in r.output
    assert "assumptions:" in r.output and "bytes" in r.output


def test_estimate_json_prices_online_and_batch() -> None:
    spec = SAMPLES / "chat.jsonl"
    r = CliRunner().invoke(
        cli, ["estimate", str(spec), "--price-as", "glm-4.7", "--output-tokens", "100", "--json"]
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    m = data["by_model"]["glm-4.7"]
    rows, output = _max_tokens(spec, 100)
    assert (m["rows"], m["output_tokens"]) == (rows, output)
    assert 0 < m["prompt_tokens"] < 20 * 200  # short prompts: tens of tokens each
    # glm-4.7: 0.6 USD / M input, 2.2 USD / M output.
    expected = (m["prompt_tokens"] * 600 + m["output_tokens"] * 2200) / 1e9
    assert m["online"] == pytest.approx(expected)
    assert data["batch"] == pytest.approx(data["online"] / 2, rel=1e-6)
    assert data["estimate"] is True and data["currency"] == "USD"


def test_estimate_mixed_and_bad_specs() -> None:
    r = CliRunner().invoke(cli, ["estimate", str(SAMPLES / "mixed.jsonl"), "--json"])
    data = json.loads(r.output)
    assert {"glm-4.5-air", "embedding-3"} <= set(data["by_model"])
    assert data["by_model"]["embedding-3"]["output_tokens"] == 0
    assert data["online"] > 0
    r = CliRunner().invoke(cli, ["estimate", str(SAMPLES / "bad.jsonl"), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["invalid_rows"] > 20
    r = CliRunner().invoke(cli, ["estimate", str(SAMPLES / "chat.jsonl"), "--use-tokenizer"])
    assert r.exit_code == 2 and "ZAI_API_KEY" in r.output


@pytest.mark.anyio
async def test_estimate_with_the_tokenizer_sends_nothing_billable() -> None:
    spec = SAMPLES / "chat.jsonl"
    prices = load_prices("zai")
    async with Simulator(SimConfig()) as sim:
        transport = make_transport("httpx", sim.base_url, "estimate-key")
        try:
            est = await estimate_spec(
                spec, SpecDefaults(), prices, tokenizer=transport_tokenizer(transport)
            )
        finally:
            await transport.aclose()
        stats = sim.stats()
    m = est.models["glm-4.7-flash"]
    assert m.rows == m.tokenized == 20
    assert m.prompt_tokens > 0
    assert stats["requests"] == {"tokenizer": 20}
    assert stats["billed"]["requests"] == 0
