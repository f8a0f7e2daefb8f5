"""Read a job's spec (JSONL or Parquet) as a stream of batches of ``Request`` or ``InvalidRow``.

A spec may hold a million rows, so it is never loaded whole: JSONL is split from fixed-size
chunks and Parquet is read in record batches. Every data row yields exactly one item, in file
order; a bad row becomes an ``InvalidRow`` naming its line and field and never stops the reading of
the rest. Only a problem with the file as a whole (missing, unknown format, not Parquet) raises
``SpecError``.

Rows come in two forms, mixed freely: the provider Batch-API line (``custom_id``, ``method``,
``url``, ``body``) and a bare request body whose endpoint and model come from ``SpecDefaults``.
``seq`` counts data rows from 0 (blank lines are not rows); the checkpoint keys on it, so it
depends only on the file's bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from .endpoints_table import (
    ASYNC_ENDPOINTS,
    CHECKS,
    ENDPOINTS,
    MODELLESS_ENDPOINTS,
    canonical_endpoint,
    endpoint_hint,
    json_kind,
    short_repr,
)

__all__ = [
    "ASYNC_ENDPOINTS",
    "ENDPOINTS",
    "MAX_LINE_BYTES",
    "InvalidRow",
    "Request",
    "SpecDefaults",
    "SpecError",
    "ValidationReport",
    "canonical_endpoint",
    "derive_custom_id",
    "jsonl_lines",
    "read_spec",
    "spec_fingerprint",
    "validate_spec",
]

MAX_LINE_BYTES = 16 * 1024 * 1024
MAX_CUSTOM_ID = 256
MAX_STORED_ERRORS = 1000
_CHUNK = 1 << 20
_BOM = b"\xef\xbb\xbf"
_FORMATS = dict.fromkeys(("jsonl", "json", "ndjson"), "jsonl") | dict.fromkeys(
    ("parquet", "pq"), "parquet"
)
_META_COLUMNS = ("custom_id", "url", "method")
_blake2b = hashlib.blake2b  # bound once: it runs for every row


class SpecError(Exception):
    """The spec file as a whole cannot be read; the message says what to do about it."""


@dataclass(frozen=True, slots=True)
class SpecDefaults:
    """What a short row leaves out, from the job file or CLI flags."""

    endpoint: str | None = None  # canonical kind or any accepted url form
    model: str | None = None
    body: Mapping[str, Any] = field(default_factory=dict)  # merged under each body; row keys win


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

    def __str__(self) -> str:
        if self.field is None:
            return f"line {self.line}: {self.message}"
        return f"line {self.line}, field {self.field}: {self.message}"


_NO_DEFAULTS = SpecDefaults()


def derive_custom_id(line: int) -> str:
    """The id of a row that has none: from its line (Parquet: row), so stable while the file is."""
    return f"line-{line}"


def spec_fingerprint(path: Path) -> str:
    """sha256 of the file's bytes, streamed, so a resume can tell whether the spec changed."""
    try:
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as exc:
        raise SpecError(f"cannot read spec {path}: {exc.strerror or exc}") from exc


def _implied_endpoint(body: Any) -> str | None:
    """The endpoint a row without a url can only mean: ``messages`` is a chat, ``input`` an
    embedding. A body with both, or with neither (``prompt`` may be an image or a video), is
    ambiguous and needs a url or --endpoint."""
    if type(body) is not dict:
        return None
    chat, embed = "messages" in body, "input" in body
    if chat == embed:
        return None
    return "chat/completions" if chat else "embeddings"


class _Rows:
    """Turns one row's parts into a Request or InvalidRow; holds the defaults and the ids seen."""

    __slots__ = ("_endpoint", "_flat", "_model", "_nested", "_seen")

    def __init__(self, defaults: SpecDefaults) -> None:
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
        # 8-byte digests, not the ids themselves: about 80 MB per million rows, whatever the ids.
        # A dict, not a set: a dict holding only bytes is untracked by the cyclic GC, while a set
        # is walked at every full collection, which made reading a 1M-row spec a third slower.
        self._seen: dict[bytes, None] = {}

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
            known = self._claim_id(cid, line)
            endpoint = self._endpoint_of(url, method, body)
            body = self._body_of(body, body_json)
            model = self._model_of(body, endpoint)
        except _Bad as bad:
            return InvalidRow(seq, line, known, bad.field, bad.message)
        problem = CHECKS[endpoint](body, model)
        if problem is not None:
            return InvalidRow(seq, line, known, problem[0], problem[1])
        return Request(seq, line, known, endpoint, model, body)

    def _claim_id(self, given: Any, line: int) -> str:
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
        digest = _blake2b(cid.encode(), digest_size=8).digest()  # parsed text has no surrogates
        if digest in self._seen:
            raise _Bad("custom_id", f"duplicate custom_id {cid!r}: an earlier row uses it")
        self._seen[digest] = None
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
            return merged
        return body

    def _model_of(self, body: dict[str, Any], endpoint: str) -> str:
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
    """A row's first problem, raised from the checks so ``_Rows.build`` builds one InvalidRow."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def jsonl_lines(
    f: IO[bytes], cap: int, chunk_size: int = _CHUNK
) -> Iterator[tuple[int, bytes | int]]:
    """Yield ``(line number, bytes)`` per physical line, splitting fixed-size chunks.

    A line longer than ``cap`` is yielded as its length instead: its bytes are dropped as they
    are read, so a runaway line costs no more memory than the cap. A leading BOM is dropped.
    """
    lineno = 0
    head: list[bytes] = []  # pieces of the line still open at the end of the previous chunk
    head_len = 0
    skipping = 0  # > 0 while dropping an over-long line: its length so far
    chunk = f.read(chunk_size)
    if chunk.startswith(_BOM):
        chunk = chunk[len(_BOM) :] or f.read(chunk_size)
    while chunk:
        parts = chunk.split(b"\n")
        tail = parts.pop()
        if parts:
            first = parts[0]
            lineno += 1
            if skipping:
                yield lineno, skipping + len(first)
                skipping = 0
            else:
                if head:
                    head.append(first)
                    first = b"".join(head)
                    head, head_len = [], 0
                yield lineno, first if len(first) <= cap else len(first)
            for k in range(1, len(parts)):
                part = parts[k]
                lineno += 1
                yield lineno, part if len(part) <= cap else len(part)
        if skipping:
            skipping += len(tail)
        elif head_len + len(tail) > cap:
            skipping, head, head_len = head_len + len(tail), [], 0
        elif tail:
            head.append(tail)
            head_len += len(tail)
        chunk = f.read(chunk_size)
    if skipping:
        yield lineno + 1, skipping
    elif head:
        yield lineno + 1, b"".join(head)


def _bad_json(seq: int, line: int, raw: bytes, exc: orjson.JSONDecodeError) -> InvalidRow:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        where = f"byte 0x{raw[bad.start]:02x} at position {bad.start + 1}"
        message = f"not valid UTF-8 ({where}): save the spec as UTF-8"
        return InvalidRow(seq, line, None, None, message)
    return InvalidRow(seq, line, None, None, f"invalid JSON at column {exc.colno}: {exc.msg}")


def _read_jsonl(
    path: Path, rows: _Rows, batch_size: int, cap: int
) -> Iterator[list[Request | InvalidRow]]:
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    batch: list[Request | InvalidRow] = []
    seq = 0
    try:
        f = path.open("rb")
    except OSError as exc:
        raise SpecError(f"cannot read spec {path}: {exc.strerror or exc}") from exc
    with f:
        for line, raw in jsonl_lines(f, cap):
            item: Request | InvalidRow
            if isinstance(raw, int):
                problem = f"line is {raw:,} bytes, over the {cap:,}-byte cap"
                item = InvalidRow(seq, line, None, None, f"{problem}: shorten or split the request")
            elif not raw or raw.isspace():
                continue
            else:
                try:
                    obj = loads(raw)
                except decode_error as exc:
                    item = _bad_json(seq, line, raw, exc)
                else:
                    item = rows.from_object(seq, line, obj)
            batch.append(item)
            seq += 1
            if len(batch) >= batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def _drop_nulls(value: Any) -> Any:
    """Undo struct unification: Arrow gives every row every key of a struct, absent ones null."""
    if type(value) is dict:
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if type(value) is list:
        return [_drop_nulls(v) for v in value]
    return value


def _read_parquet(path: Path, rows: _Rows, batch_size: int) -> Iterator[list[Request | InvalidRow]]:
    import pyarrow.parquet as pq  # deferred: slow to import, and most specs are JSONL

    batch: list[Request | InvalidRow] = []
    seq = 0
    # A buffered stream, not pre-buffering: pages are read as batches need them, so a spec in one
    # huge row group does not land in memory whole.
    with pq.ParquetFile(path, buffer_size=_CHUNK, pre_buffer=False) as pf:
        names = pf.schema_arrow.names
        has_body = "body" in names
        if has_body:  # other columns (notes, labels) are not decoded at all
            names = [n for n in names if n in _META_COLUMNS or n == "body"]
        body_names = [n for n in names if n not in _META_COLUMNS]
        for record_batch in _record_batches(pf, path, names, batch_size):
            n = record_batch.num_rows
            cols = {name: record_batch.column(name).to_pylist() for name in names}
            none: list[Any] = [None] * n
            ids, urls, methods = (cols.get(name, none) for name in _META_COLUMNS)
            if has_body:
                bodies = [_drop_nulls(b) if type(b) is dict else b for b in cols["body"]]
            else:  # short form: the other columns are the body; a null cell is an absent key
                values = (
                    zip(*(cols[k] for k in body_names), strict=True) if body_names else [()] * n
                )
                bodies = [_drop_nulls(dict(zip(body_names, row, strict=True))) for row in values]
            for k in range(n):
                item = rows.build(seq, seq + 1, ids[k], urls[k], methods[k], bodies[k], True)
                batch.append(item)
                seq += 1
                if len(batch) >= batch_size:
                    yield batch
                    batch = []
    if batch:
        yield batch


def _record_batches(pf: Any, path: Path, columns: list[str], batch_size: int) -> Iterator[Any]:
    """``iter_batches``, with a file that breaks part-way through reported as a SpecError."""
    import pyarrow as pa

    batches = pf.iter_batches(batch_size=batch_size, columns=columns)
    rows = 0
    while True:
        try:
            record_batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            raise SpecError(f"{path} is damaged after row {rows:,}: {exc}") from exc
        rows += record_batch.num_rows
        yield record_batch


def _check_parquet(path: Path) -> None:
    """Read the footer now, so a file that is not Parquet fails before the run starts."""
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid or OSError for the same causes
        raise SpecError(
            f"{path} is not a readable Parquet file ({exc}): if it is JSONL, name it .jsonl "
            "or pass --format jsonl"
        ) from exc


def _spec_format(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        kind = _FORMATS.get(fmt.lower().lstrip("."))
        if kind is None:
            raise SpecError(f"unknown spec format {fmt!r}: use jsonl or parquet")
        return kind
    kind = _FORMATS.get(path.suffix.lower().lstrip("."))
    if kind is None:
        raise SpecError(
            f"cannot tell the format of {path.name} from its extension: name it .jsonl or "
            ".parquet, or pass --format jsonl|parquet"
        )
    return kind


def read_spec(
    path: Path,
    defaults: SpecDefaults = _NO_DEFAULTS,
    *,
    batch_size: int = 1024,
    fmt: str | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> Iterator[list[Request | InvalidRow]]:
    """Stream the spec as lists of up to ``batch_size`` items, one per data row, in file order.

    File-level problems raise ``SpecError`` here, before the first batch, so a run that cannot
    read its spec stops before anything is sent.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    path = Path(path)
    if not path.is_file():
        raise SpecError(
            f"spec file not found: {path}" + (" (it is a directory)" if path.is_dir() else "")
        )
    kind = _spec_format(path, fmt)
    rows = _Rows(defaults)
    if kind == "jsonl":
        return _read_jsonl(path, rows, batch_size, max_line_bytes)
    _check_parquet(path)
    return _read_parquet(path, rows, batch_size)


@dataclass
class ValidationReport:
    """What ``runner validate`` prints: counts, the first errors, and where the valid rows go."""

    total: int = 0
    valid: int = 0
    errors: list[InvalidRow] = field(default_factory=list)  # the first MAX_STORED_ERRORS only
    invalid: int = 0  # every invalid row, stored or not
    by_endpoint: dict[str, int] = field(default_factory=dict)
    by_model: dict[str, int] = field(default_factory=dict)

    def render(self) -> str:
        out = [str(err) for err in self.errors]
        if self.invalid > len(self.errors):
            out.append(f"... and {self.invalid - len(self.errors):,} more invalid rows not shown")
        summary = f"{self.total:,} rows: {self.valid:,} valid, {self.invalid:,} invalid"
        for name, counts in (("endpoints", self.by_endpoint), ("models", self.by_model)):
            if counts:
                summary += f"; {name}: " + ", ".join(
                    f"{k} {v:,}" for k, v in sorted(counts.items())
                )
        out.append(summary)
        return "\n".join(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "valid": self.valid,
            "invalid": self.invalid,
            "errors": [asdict(err) for err in self.errors],
            "errors_truncated": self.invalid > len(self.errors),
            "by_endpoint": dict(self.by_endpoint),
            "by_model": dict(self.by_model),
        }


def validate_spec(
    path: Path,
    defaults: SpecDefaults = _NO_DEFAULTS,
    fmt: str | None = None,
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> ValidationReport:
    """Read the whole spec and count what a run would send, without sending anything."""
    report = ValidationReport()
    for batch in read_spec(path, defaults, fmt=fmt, max_line_bytes=max_line_bytes):
        for item in batch:
            report.total += 1
            if isinstance(item, Request):
                report.valid += 1
                report.by_endpoint[item.endpoint] = report.by_endpoint.get(item.endpoint, 0) + 1
                if item.model:
                    report.by_model[item.model] = report.by_model.get(item.model, 0) + 1
            else:
                report.invalid += 1
                if len(report.errors) < MAX_STORED_ERRORS:
                    report.errors.append(item)
    return report
