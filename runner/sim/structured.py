"""Structured answers of the simulated model: values that fit a JSON Schema, and the
answers gone wrong that the ``*-once`` markers ask for.

A client asking for ``json_object`` output says in its system message what shape it wants;
the simulated model follows that schema (`schema_in`, `sample_value`), and the same sampler
gives tool calls real arguments. `opening_key` names a conversation so that a marker spoils
only the first answer to it (`spoil_json`), as a client that asks again would see.
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import Any

import orjson

__all__ = ["VOCAB", "opening_key", "sample_value", "schema_in", "spoil_json"]

# The simulated models' 64 plain ASCII words: one byte of hash output picks one (b & 63),
# and ASCII keeps characters == bytes, so truncating to a token budget is a slice.
VOCAB = (
    "the",
    "model",
    "answer",
    "data",
    "batch",
    "token",
    "result",
    "value",
    "simple",
    "quick",
    "steady",
    "bright",
    "river",
    "stone",
    "cloud",
    "signal",
    "vector",
    "field",
    "record",
    "system",
    "output",
    "input",
    "request",
    "reply",
    "north",
    "south",
    "light",
    "green",
    "blue",
    "sample",
    "careful",
    "precise",
    "honest",
    "useful",
    "short",
    "long",
    "clear",
    "open",
    "number",
    "letter",
    "table",
    "chart",
    "graph",
    "point",
    "line",
    "plane",
    "window",
    "garden",
    "paper",
    "story",
    "method",
    "reason",
    "example",
    "summary",
    "detail",
    "context",
    "history",
    "future",
    "amber",
    "coral",
    "delta",
    "echo",
    "forest",
    "harbor",
)


def _bound(schema: dict[str, Any], name: str, default: float) -> float:
    """A numeric schema keyword, or ``default`` when it is absent or not a sane number."""
    value = schema.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or abs(value) > 1e12:
        return default
    return float(value)


def _resolve(schema: Any, root: Any) -> Any:
    """Follow a local ``$ref`` (``#/$defs/X``, as pydantic writes nested models) once."""
    ref = schema.get("$ref") if isinstance(schema, dict) else None
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    node = root
    for part in ref[2:].split("/"):
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else schema


def sample_value(schema: Any, rng: random.Random, depth: int = 0, root: Any = None) -> Any:
    """A value that fits a (simple) JSON Schema: enough to give tool calls real arguments."""
    schema = _resolve(schema, root)
    if not isinstance(schema, dict) or depth > 8:
        return VOCAB[rng.randrange(64)]
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[rng.randrange(len(enum))]
    for combo in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combo)
        if isinstance(options, list) and options:
            return sample_value(options[0], rng, depth + 1, root)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "string" and schema.get("format") in _FORMATS:
        return _FORMATS[schema["format"]]
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties")
        if not isinstance(props, dict):
            return {}
        return {str(k): sample_value(v, rng, depth + 1, root) for k, v in props.items()}
    if kind == "array":
        size = min(3, max(1, int(_bound(schema, "minItems", 1))))
        return [sample_value(schema.get("items"), rng, depth + 1, root) for _ in range(size)]
    if kind == "integer":
        low = math.ceil(_bound(schema, "minimum", 0))
        high = max(low, math.floor(_bound(schema, "maximum", low + 100)))
        return rng.randint(low, high)
    if kind == "number":
        floor = _bound(schema, "minimum", 0.0)
        ceiling = max(floor, _bound(schema, "maximum", floor + 100.0))
        return round(floor + rng.random() * (ceiling - floor), 3)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return VOCAB[rng.randrange(64)]


_FORMATS = {"date": "2025-01-31", "date-time": "2025-01-31T12:00:00Z", "email": "a@example.com"}
_SCHEMA_HINT = "JSON Schema"


def schema_in(messages: Any) -> dict[str, Any] | None:
    """The JSON Schema a client put in its system message, if any (the model follows it).

    A client asking for ``json_object`` output says what shape it wants in the prompt; the
    simulated model reads the first system text that mentions a JSON Schema and parses the
    outermost ``{...}`` in it.
    """
    if not isinstance(messages, list):
        return None
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "system":
            continue
        text = message.get("content")
        if not isinstance(text, str) or _SCHEMA_HINT not in text:
            continue
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end < start:
            continue
        try:
            schema = orjson.loads(text[start : end + 1])
        except orjson.JSONDecodeError:
            continue
        if isinstance(schema, dict):
            return schema
    return None


def opening_key(model: str, messages: Any) -> bytes:
    """A conversation's identity: the model and its messages up to the first user message.

    A client that asks again appends the bad answer and a correction after the opening, so
    the retry keeps the key; two rows with different prompts never share one, even when a
    marker sits in a system text that every row shares.
    """
    opening: list[Any] = []
    for message in messages if isinstance(messages, list) else []:
        opening.append(message)
        if isinstance(message, dict) and message.get("role") == "user":
            break
    raw = orjson.dumps([model, opening], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(raw, digest_size=16).digest()


def spoil_json(text: str, how: str) -> str:
    """A JSON answer gone wrong the way models get it wrong: cut short, or a field mistyped.

    ``how`` is ``bad-json`` (the closing brace is missing) or ``wrong-type`` (the first
    number or boolean becomes a string; with none, the first string becomes a number).
    """
    if how == "bad-json":
        return text.rstrip().removesuffix("}") or "{"
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    if not isinstance(value, dict) or not value:
        return orjson.dumps(["not", "an", "object"]).decode()
    for key, item in value.items():
        if isinstance(item, bool | int | float):
            value[key] = str(item).lower()
            return orjson.dumps(value).decode()
    for key, item in value.items():
        if isinstance(item, str):
            value[key] = 12345
            return orjson.dumps(value).decode()
    key = next(iter(value))
    value[key] = 12345 if not isinstance(value[key], int | float) else "wrong"
    return orjson.dumps(value).decode()
