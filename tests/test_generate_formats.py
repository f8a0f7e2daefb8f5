"""`generate` asks for structured output as the caller and the provider allow (issue 28)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from simproc import SimProcess

import runner
from runner.generation.generate import summary_of

SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "year": {"type": "integer"}},
    "required": ["title", "year"],
}
STRICT = {**SCHEMA, "additionalProperties": False}


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    # An OpenAI-compatible server: it enforces json_schema as vLLM and llama.cpp do.
    with SimProcess() as running:
        running.configure(json_schema=True)
        yield running


def formats(sim: SimProcess) -> dict[str, int]:
    return {k: v for k, v in sim.stats()["response_formats"].items()}


def gen(sim: SimProcess, out: Path, provider: str, **kw: Any) -> Any:
    base = sim.root + ("/v1" if provider == "openai" else "/api/paas/v4")
    return runner.generate(
        [{"topic": f"t{i}"} for i in range(4)],
        prompt="Name a book about {topic}.",
        model="my-model",
        out=out,
        provider=provider,
        base_url=base,
        progress=False,
        cache=False,
        **kw,
    )


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def test_a_callers_response_format_is_sent_exactly_as_given(
    sim: SimProcess, tmp_path: Path
) -> None:
    given = {
        "type": "json_schema",
        "json_schema": {"name": "book", "schema": SCHEMA, "strict": False},
    }
    table = gen(
        sim, tmp_path / "out", "openai", response_format=SCHEMA, body={"response_format": given}
    )
    assert set(table.column("status").to_pylist()) == {"succeeded"}
    assert formats(sim) == {canonical(given): 4}


def test_openai_gets_the_schema_itself_strict_when_it_allows(
    sim: SimProcess, tmp_path: Path
) -> None:
    table = gen(sim, tmp_path / "a", "openai", response_format=STRICT)
    assert set(table.column("status").to_pylist()) == {"succeeded"}
    sent = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": STRICT, "strict": True},
    }
    assert formats(sim) == {canonical(sent): 4}


def test_a_schema_strict_mode_refuses_is_sent_unstrict(sim: SimProcess, tmp_path: Path) -> None:
    gen(sim, tmp_path / "a", "openai", response_format=SCHEMA)
    (seen,) = formats(sim)
    assert json.loads(seen)["json_schema"]["strict"] is False


def test_zai_keeps_json_mode_and_the_schema_in_the_prompt(sim: SimProcess, tmp_path: Path) -> None:
    table = gen(sim, tmp_path / "z", "zai", response_format=SCHEMA)
    assert set(table.column("status").to_pylist()) == {"succeeded"}
    assert formats(sim) == {canonical({"type": "json_object"}): 4}


def test_an_answer_cut_at_max_tokens_is_reported_as_cut(sim: SimProcess, tmp_path: Path) -> None:
    table = gen(
        sim,
        tmp_path / "c",
        "openai",
        response_format=SCHEMA,
        body={"max_tokens": 3},
        max_reasks=2,
    )
    assert set(table.column("status").to_pylist()) == {"failed"}
    errors = table.column("error_message").to_pylist()
    assert all("cut at max_tokens" in e and '"length"' in e for e in errors), errors[0]
    # Not asked again: the same cap would cut the next answer too.
    assert sum(sim.stats()["requests"].values()) == 4


def test_the_summary_says_no_price_for_an_unpriced_model(sim: SimProcess, tmp_path: Path) -> None:
    table = gen(sim, tmp_path / "p", "openai", response_format=SCHEMA)
    text, failed = summary_of(table)
    assert failed == 0
    assert "cost no price (4 rows with no price" in text
