"""The schema check and the typed columns: hostile answers never crash, and types are right."""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.errors import UsageError
from runner.generation.answers import OutputSchema
from runner.generation.prompts import PromptBuilder, RowProblem

RICH = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "count": {"type": "integer"},
        "ratio": {"type": "number"},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "where": {
            "type": "object",
            "properties": {"x": {"type": "integer"}, "label": {"type": ["string", "null"]}},
        },
        "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        "free": {"type": "object"},
        "choice": {"enum": ["a", "b"]},
    },
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)


def test_arrow_types_follow_the_schema() -> None:
    types = {f.name: f.type for f in OutputSchema(RICH).arrow}
    assert types["name"] == pa.string()
    assert types["count"] == pa.int64()
    assert types["ratio"] == pa.float64()
    assert types["ok"] == pa.bool_()
    assert types["tags"] == pa.list_(pa.string())
    assert types["where"] == pa.struct([("x", pa.int64()), ("label", pa.string())])
    assert types["either"] == pa.string()  # several types: the value's JSON text
    assert types["free"] == pa.string()
    assert types["choice"] == pa.string()


def test_check_names_the_field_and_the_problem() -> None:
    schema = OutputSchema(RICH)
    value, error = schema.check('{"count": "3"}')
    assert value is None and error is not None and "count" in error and "integer" in error
    assert "not valid JSON" in (schema.check('{"count": 3')[1] or "")
    assert schema.check('```json\n{"count": 3}\n```') == ({"count": 3}, None)
    assert schema.check(None)[1] == "the answer is empty"


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["name", "count", "ratio", "ok", "tags", "where", "either", "free"]),
        json_values,
    )
)
def test_any_answer_is_checked_and_columns_never_crash(answer: dict[str, Any]) -> None:
    schema = OutputSchema(RICH)
    try:
        text = orjson.dumps(answer).decode()
    except TypeError:  # integers past 64 bits: orjson refuses them, as a model can't send them
        return
    value, error = schema.check(text)
    assert (value is None) != (error is None)
    columns = schema.columns([value, None])
    assert [len(c) for c in columns] == [2] * len(schema.fields)


@given(st.text(max_size=40))
def test_any_text_is_checked_without_raising(text: str) -> None:
    value, error = OutputSchema(RICH).check(text)
    assert (value is None) != (error is None)


def test_bad_schemas_and_templates_are_refused_up_front() -> None:
    with pytest.raises(UsageError, match="object"):
        OutputSchema({"type": "string"})
    with pytest.raises(UsageError, match="not a valid JSON Schema"):
        OutputSchema({"type": "object", "properties": {"a": {"type": "wat"}}})
    with pytest.raises(UsageError, match="positional"):
        PromptBuilder("Hello {}", ["a"])
    with pytest.raises(UsageError, match="'b'"):
        PromptBuilder("{a} and {b.c}", ["a"])
    builder = PromptBuilder("{a:.2f}", ["a"])
    with pytest.raises(RowProblem, match="cannot be filled"):
        builder.messages({"a": "text"})


def test_rows_that_cannot_form_a_table_are_named() -> None:
    from runner.generation.sources import open_source

    rows: list[dict[str, Any]] = [{"id": 1, "t": "a"}, {"id": 2.5, "t": "b"}, {"id": "x", "t": 3}]
    with pytest.raises(UsageError, match=r"row 2, column 'id': str 'x'"):
        open_source(rows)
    with pytest.raises(UsageError, match="row 1 is"):
        open_source([{"a": 1}, "oops"])


def test_the_simulator_spoils_json_the_way_models_do() -> None:
    from runner.sim.structured import opening_key, schema_in, spoil_json

    good = '{"title": "river", "year": 1987}'
    assert orjson.loads(spoil_json(good, "wrong-type")) == {"title": "river", "year": "1987"}
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(spoil_json(good, "bad-json"))
    system = {"role": "system", "content": 'JSON Schema:\n{"type": "object"}'}
    first = [system, {"role": "user", "content": "a"}]
    again = [*first, {"role": "assistant", "content": "x"}, {"role": "user", "content": "fix"}]
    assert opening_key("m", first) == opening_key("m", again)
    assert opening_key("m", first) != opening_key("m", [system, {"role": "user", "content": "b"}])
    assert schema_in(first) == {"type": "object"}
