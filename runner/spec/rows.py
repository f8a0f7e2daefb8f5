"""One spec row's parts checked in a fixed order, into a ``Request`` or an ``InvalidRow``.

The first problem found is the row's error, named by line and field. Every row claims its
``custom_id`` whether it is valid or not, so fixing one row never moves another's error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..localfiles import check_files
from .checks import (
    AGENT_ENDPOINTS,
    CHECKS,
    MODELLESS_ENDPOINTS,
    canonical_endpoint,
    endpoint_hint,
    json_kind,
    short_repr,
)
from .ids import IdSet

__all__ = [
    "MAX_CUSTOM_ID",
    "InvalidRow",
    "Request",
    "Rows",
    "SpecDefaults",
    "SpecError",
    "derive_custom_id",
]

MAX_CUSTOM_ID = 256


class SpecError(Exception):
    """The spec file as a whole cannot be read; the message says what to do about it."""


@dataclass(frozen=True, slots=True)
class SpecDefaults:
    """What a short row leaves out, from the job file or CLI flags."""

    endpoint: str | None = None  # canonical kind or any accepted url form
    model: str | None = None
    body: Mapping[str, Any] = field(default_factory=dict)  # merged under each body; row keys win
    # Where a row's local file references resolve (localfiles.py); None: no local files.
    files_root: Path | None = None
    # Written over each body, row keys included (`runner retry --set`): "body.a.b" -> value.
    overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Request:
    """One valid row, ready to send: ``body`` is exactly what goes on the wire."""

    seq: int
    line: int
    custom_id: str
    endpoint: str
    model: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class InvalidRow:
    """One row that cannot be sent; ``field`` is a dotted path, or None for the whole line."""

    seq: int
    line: int
    custom_id: str | None
    field: str | None
    message: str
    # "file_too_large" or "audio_too_long" for a local file over one of its field's caps;
    # otherwise a malformed row.
    code: str = "invalid_row"

    def __str__(self) -> str:
        if self.field is None:
            return f"line {self.line}: {self.message}"
        return f"line {self.line}, field {self.field}: {self.message}"


def derive_custom_id(line: int) -> str:
    """The id of a row that has none: from its line (Parquet: row), so stable while the file is."""
    return f"line-{line}"


def _implied_endpoint(body: Any) -> str | None:
    """The endpoint a row without a url can only mean: ``agent_id`` is an agent, else
    ``messages`` a chat, ``input`` an embedding. A body with both, or with neither (``prompt``
    may be an image or a video), is ambiguous and needs a url or --endpoint."""
    if type(body) is not dict:
        return None
    if "agent_id" in body:
        return "agents"
    chat, embed = "messages" in body, "input" in body
    if chat == embed:
        return None
    return "chat/completions" if chat else "embeddings"


# Whether a row the reader skipped without parsing (finished in an earlier run) claimed
# this id: (custom_id, seq of the row asking) -> bool. The checkpoint answers it.
Taken = Callable[[str, int], bool]


class Rows:
    """Turns one row's parts into a Request or InvalidRow; holds the defaults and the ids seen.

    `taken`, when rows are skipped unparsed (a resume), is asked about each id the seen
    ids do not hold, so a row that repeats a skipped row's id is still a duplicate.
    """

    __slots__ = (
        "_endpoint",
        "_files_root",
        "_flat",
        "_model",
        "_nested",
        "_overrides",
        "_seen",
        "_taken",
    )

    def __init__(self, defaults: SpecDefaults, taken: Taken | None = None) -> None:
        self._endpoint: str | None = None
        if defaults.endpoint is not None:
            self._endpoint = canonical_endpoint(defaults.endpoint)
            if self._endpoint is None:
                hint = endpoint_hint(defaults.endpoint)
                raise SpecError(f"unknown default endpoint {defaults.endpoint!r}: {hint}")
        if defaults.model is not None and (type(defaults.model) is not str or not defaults.model):
            raise SpecError(f"default model must be a non-empty string, got {defaults.model!r}")
        self._model = defaults.model
        # Nested default values are re-created per row from JSON, so no two bodies share a mutable
        # object that a later stage might edit in place.
        self._flat = {k: v for k, v in defaults.body.items() if type(v) not in (dict, list)}
        nested = {k: v for k, v in defaults.body.items() if type(v) in (dict, list)}
        try:
            self._nested = orjson.dumps(nested) if nested else b""
        except TypeError as exc:
            raise SpecError(f"default body is not JSON: {exc}") from exc
        self._seen = IdSet()
        self._taken = taken
        self._files_root = defaults.files_root
        self._overrides = [
            (path.split(".")[1:], value) for path, value in defaults.overrides.items()
        ]

    def from_object(self, seq: int, line: int, obj: Any) -> Request | InvalidRow:
        """A parsed JSONL line: a Batch-API line if it has ``body`` or ``url``, else a bare body."""
        if type(obj) is not dict:
            kind = json_kind(obj)
            return InvalidRow(seq, line, None, None, f"line is a JSON {kind}, not a request object")
        if "body" in obj or "url" in obj:
            cid, url, method = obj.get("custom_id"), obj.get("url"), obj.get("method")
            return self.build(seq, line, cid, url, method, obj.get("body"), False)
        return self.build(seq, line, obj.pop("custom_id", None), None, None, obj, False)

    def build(
        self, seq: int, line: int, cid: Any, url: Any, method: Any, body: Any, body_json: bool
    ) -> Request | InvalidRow:
        """Check one row's parts in a fixed order; the first problem found is the row's error."""
        # The id an error reports: None until the id is known good and unique, so an error never
        # carries an id that names another row (outputs and the store may be keyed by it).
        known: str | None = None
        try:
            known = self._claim_id(cid, line, seq)
            endpoint = self._endpoint_of(url, method, body)
            body = self._body_of(body, body_json)
            model = self._model_of(body, endpoint)
        except _Bad as bad:
            return InvalidRow(seq, line, known, bad.field, bad.message)
        problem = CHECKS[endpoint](body, model)
        if problem is not None:
            return InvalidRow(seq, line, known, problem[0], problem[1])
        bad_file = check_files(endpoint, body, self._files_root or Path.cwd())
        if bad_file is not None:
            code = bad_file[2] or "invalid_row"
            return InvalidRow(seq, line, known, bad_file[0], bad_file[1], code)
        return Request(seq, line, known, endpoint, model, body)

    def _claim_id(self, given: Any, line: int, seq: int) -> str:
        cid: str
        if given is None:
            cid = derive_custom_id(line)
        elif type(given) is int:  # common in generated specs; bool is not int here, so rejected
            cid = str(given)
        elif type(given) is not str:
            raise _Bad("custom_id", f"custom_id must be a non-empty string, got {json_kind(given)}")
        elif not given or len(given) > MAX_CUSTOM_ID:
            size = f"has {len(given)} characters, over {MAX_CUSTOM_ID}" if given else "is empty"
            fix = "use a shorter unique id" if given else "give the row a unique id"
            raise _Bad("custom_id", f"custom_id {size}: {fix}, or drop the key to use line-{line}")
        else:
            cid = given
        # Every row's id is claimed, valid row or not, so fixing one row never moves an error.
        # (Parsed text has no surrogates, so the id always encodes.)
        if not self._seen.add(cid) or (self._taken is not None and self._taken(cid, seq)):
            raise _Bad("custom_id", f"duplicate custom_id {cid!r}: an earlier row uses it")
        return cid

    def _endpoint_of(self, url: Any, method: Any, body: Any) -> str:
        if method is not None and method != "POST":
            raise _Bad("method", f"method must be POST, got {short_repr(method)}")
        if url is None:
            if self._endpoint is not None:
                return self._endpoint
            implied = _implied_endpoint(body)
            if implied is None:
                raise _Bad(
                    "url", "no endpoint: add a url like /v4/chat/completions, or pass --endpoint"
                )
            return implied
        endpoint = canonical_endpoint(url) if type(url) is str else None
        if endpoint is None:
            raise _Bad("url", f"unknown endpoint {short_repr(url)}: {endpoint_hint(url)}")
        return endpoint

    def _body_of(self, body: Any, body_json: bool) -> dict[str, Any]:
        if body_json and (type(body) is str or type(body) is bytes):
            try:
                body = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise _Bad(
                    "body", f"body is not valid JSON at column {exc.colno}: {exc.msg}"
                ) from None
        if type(body) is not dict:
            what = "missing body" if body is None else f"body is a {json_kind(body)}"
            raise _Bad("body", f"{what}: it must be a JSON object (the request)")
        if self._flat or self._nested:
            merged: dict[str, Any] = orjson.loads(self._nested) if self._nested else {}
            merged.update(self._flat)
            merged.update(body)
            body = merged
        if self._overrides:
            _override(body, self._overrides)
        return body  # type: ignore[no-any-return]

    def _model_of(self, body: dict[str, Any], endpoint: str) -> str:
        if endpoint in AGENT_ENDPOINTS:
            agent = body.get("agent_id")
            return agent if type(agent) is str else ""  # the check names a bad agent_id
        model = body.get("model")
        if model is None:
            if endpoint in MODELLESS_ENDPOINTS:
                return ""
            if self._model is None:
                raise _Bad("body.model", "missing model: set body.model or pass --model")
            body["model"] = self._model
            return self._model
        if type(model) is not str or not model:
            raise _Bad("body.model", f"model must be a non-empty string, got {short_repr(model)}")
        return model


class _Bad(Exception):
    """A row's first problem, raised from the checks so ``Rows.build`` builds one InvalidRow."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _override(body: dict[str, Any], overrides: list[tuple[list[str], Any]]) -> None:
    """Set each dotted path in `body`, making the objects on the way (a retry's --set)."""
    for parts, value in overrides:
        node = body
        for part in parts[:-1]:
            child = node.get(part)
            if type(child) is not dict:
                child = node[part] = {}
            node = child
        node[parts[-1]] = orjson.loads(orjson.dumps(value))  # a fresh copy per row
