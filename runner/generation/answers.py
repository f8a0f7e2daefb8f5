"""Structured answers: a JSON Schema (or a pydantic model) as the shape every answer must have.

One object holds the schema, the instruction that gives it to the model, the check of an
answer, and the Arrow type of each field, so the request, the re-ask and the result table all
agree on one shape.

Validation: a JSON Schema dict is checked by `jsonschema` (the reference implementation; a
validator is compiled once per job, and a two-field answer takes about 15 µs, against the
~100 µs the engine spends on a row), with the validator class the schema's `$schema` names
(Draft 2020-12 by default). A pydantic model class is checked by pydantic itself
(`model_validate_json`, about 3 µs), so its own rules (validators, constraints, defaults)
hold exactly, which its exported JSON Schema may not express. Both see the answer as JSON, parsed by
orjson; a fenced ```json block is unwrapped first, as models often send one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pyarrow as pa

from ..errors import UsageError

__all__ = ["OutputSchema"]

Converter = Callable[[Any], Any]


def _resolve(node: Any, root: dict[str, Any]) -> Any:
    """Follow local `$ref`s (`#/$defs/Name`, as pydantic writes nested models)."""
    seen = 0
    while isinstance(node, dict) and isinstance(node.get("$ref"), str) and seen < 32:
        ref: str = node["$ref"]
        if not ref.startswith("#/"):
            raise UsageError(f"response_format: only local $refs are supported, got {ref!r}")
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            raise UsageError(f"response_format: $ref {ref!r} points at nothing")
        node = target
        seen += 1
    return node


def _json_text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _int(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _float(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _kind(node: dict[str, Any]) -> str | None:
    """The one non-null JSON type a node allows, or None when it allows several."""
    kind = node.get("type")
    if isinstance(kind, list):
        rest = [k for k in kind if k != "null"]
        return rest[0] if len(rest) == 1 else None
    if isinstance(kind, str):
        return kind
    for combo in ("anyOf", "oneOf"):
        options = node.get(combo)
        if isinstance(options, list):
            rest = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            if len(rest) == 1 and isinstance(rest[0], dict):
                return _kind(rest[0]) if "type" in rest[0] else "$one"
            return None
    enum = node.get("enum", [node["const"]] if "const" in node else None)
    if isinstance(enum, list) and enum:
        kinds = {type(v) for v in enum if v is not None}
        if kinds == {str}:
            return "string"
        if kinds == {int}:
            return "integer"
        if kinds <= {int, float}:
            return "number"
        if kinds == {bool}:
            return "boolean"
    if "properties" in node:
        return "object"
    return None


def _one_option(node: dict[str, Any]) -> dict[str, Any]:
    for combo in ("anyOf", "oneOf"):
        options = node.get(combo)
        if isinstance(options, list):
            for o in options:
                if isinstance(o, dict) and o.get("type") != "null":
                    return o
    return node


def arrow_field(node: Any, root: dict[str, Any], depth: int = 0) -> tuple[pa.DataType, Converter]:
    """The Arrow type of one schema node, and how to turn a validated value into it.

    integer -> int64, number -> float64, boolean, string; arrays -> lists, objects with
    properties -> structs. A node allowing several types, or an object without properties,
    becomes a string column holding the value's JSON text, so no answer is ever dropped.
    """
    node = _resolve(node, root)
    if not isinstance(node, dict) or depth > 16:
        return pa.string(), _json_text
    kind = _kind(node)
    if kind == "$one":
        return arrow_field(_one_option(node), root, depth + 1)
    if kind == "integer":
        return pa.int64(), _int
    if kind == "number":
        return pa.float64(), _float
    if kind == "boolean":
        return pa.bool_(), lambda v: v
    if kind == "string":
        return pa.string(), _json_text
    if kind == "array" and isinstance(node.get("items"), dict):
        item_type, item_conv = arrow_field(node["items"], root, depth + 1)

        def conv_list(v: Any) -> Any:
            return [item_conv(x) for x in v] if isinstance(v, list) else None

        return pa.list_(item_type), conv_list
    props = node.get("properties")
    if kind == "object" and isinstance(props, dict) and props:
        parts = {name: arrow_field(sub, root, depth + 1) for name, sub in props.items()}
        struct = pa.struct([(name, t) for name, (t, _) in parts.items()])

        def conv_struct(v: Any) -> Any:
            if not isinstance(v, dict):
                return None
            return {name: conv(v.get(name)) for name, (_, conv) in parts.items()}

        return struct, conv_struct
    return pa.string(), _json_text


def _strip_fence(text: str) -> str:
    t = text.strip()
    if t.startswith("```"):
        t = t[3:]
        if t[:4].lower() == "json":
            t = t[4:]
        t = t.removesuffix("```")
    return t


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class OutputSchema:
    """What an answer must look like: from a JSON Schema dict or a pydantic model class."""

    def __init__(self, response_format: Any) -> None:
        self._model: Any = None
        if isinstance(response_format, type) and hasattr(response_format, "model_json_schema"):
            self._model = response_format
            schema = response_format.model_json_schema()
        elif isinstance(response_format, dict):
            schema = response_format
        else:
            raise UsageError(
                "response_format must be a JSON Schema dict or a pydantic model class, got "
                f"{type(response_format).__name__}"
            )
        props = schema.get("properties")
        if schema.get("type", "object") != "object" or not isinstance(props, dict) or not props:
            raise UsageError(
                'response_format: the schema must describe an object ({"type": "object", '
                '"properties": {...}}); its properties become the result columns'
            )
        self.schema: dict[str, Any] = schema
        self.fields = [str(name) for name in props]
        parts = [arrow_field(props[name], schema) for name in props]
        self.arrow = pa.schema([(name, t) for name, (t, _) in zip(self.fields, parts, strict=True)])
        self._convert = [conv for _, conv in parts]
        self._validator: Any = None
        if self._model is None:
            import jsonschema  # deferred: only schema jobs pay for the import

            cls = jsonschema.validators.validator_for(
                schema, default=jsonschema.Draft202012Validator
            )
            try:
                cls.check_schema(schema)
            except jsonschema.SchemaError as exc:
                raise UsageError(
                    f"response_format is not a valid JSON Schema: {exc.message}"
                ) from None
            self._validator = cls(schema)
        self.text = orjson.dumps(schema).decode()

    def response_format(self, json_schema: bool) -> dict[str, Any]:
        """What to ask the server for: the schema itself where the provider enforces one
        (strict where the schema allows OpenAI's strict mode), else JSON mode."""
        if not json_schema:
            return {"type": "json_object"}
        spec = {"name": "answer", "schema": self.schema, "strict": strict_ok(self.schema)}
        return {"type": "json_schema", "json_schema": spec}

    def instruction(self) -> str:
        """The system text that gives the model the schema (JSON mode needs the shape said)."""
        return (
            "Answer with one JSON object and nothing else. It must match this JSON Schema:\n"
            + self.text
        )

    def check(self, text: Any) -> tuple[dict[str, Any] | None, str | None]:
        """(the answer as a dict, None) when it fits the schema, else (None, what is wrong)."""
        if not isinstance(text, str) or not text.strip():
            return None, "the answer is empty"
        raw = _strip_fence(text)
        if self._model is not None:
            return self._check_model(raw)
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return None, f"the answer is not valid JSON ({exc.msg} at column {exc.colno})"
        error = next(iter(self._validator.iter_errors(value)), None)
        if error is None:
            return value, None
        where = _path(error.absolute_path)
        field = f"field '{where}': " if where else ""
        return None, _short(f"{field}{error.message}")

    def _check_model(self, raw: str) -> tuple[dict[str, Any] | None, str | None]:
        try:
            obj = self._model.model_validate_json(raw)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            errors = getattr(exc, "errors", None)
            if callable(errors):
                first = errors()[0]
                where = _path(first.get("loc", ()))
                if first.get("type") == "json_invalid":
                    return None, _short(f"the answer is not valid JSON ({first.get('msg')})")
                field = f"field '{where}': " if where else ""
                return None, _short(f"{field}{first.get('msg')} (got {first.get('input')!r})")
            return None, _short(str(exc))
        return dict(obj.model_dump(mode="json")), None

    def columns(self, values: list[dict[str, Any] | None]) -> list[pa.Array]:
        """One typed Arrow array per field, for a batch of checked answers (None: no answer)."""
        arrays = []
        for name, conv, field in zip(self.fields, self._convert, self.arrow, strict=True):
            data = [None if v is None else conv(v.get(name)) for v in values]
            try:
                arrays.append(pa.array(data, type=field.type))
            except (pa.ArrowException, TypeError, ValueError, OverflowError):
                arrays.append(pa.array([_fits(x, field.type) for x in data], type=field.type))
        return arrays


def _fits(value: Any, kind: pa.DataType) -> Any:
    """One value Arrow accepts as `kind`, or None (e.g. an integer past int64)."""
    try:
        pa.array([value], type=kind)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return None
    return value


def strict_ok(schema: Any) -> bool:
    """Whether OpenAI's strict mode accepts the schema: every object closed
    (additionalProperties false) with every property required. Strict mode refuses any
    other schema outright, so such a schema is sent unstrict (the server follows it still)."""
    if isinstance(schema, list):
        return all(strict_ok(s) for s in schema)
    if not isinstance(schema, dict):
        return True
    props = schema.get("properties")
    if isinstance(props, dict):
        if schema.get("additionalProperties") is not False:
            return False
        if set(schema.get("required", [])) != set(props):
            return False
    return all(strict_ok(v) for k, v in schema.items() if k not in ("required", "enum", "const"))
