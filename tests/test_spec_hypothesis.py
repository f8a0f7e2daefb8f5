"""Hostile specs: files that mix valid rows with every kind of malformed line.

Whatever the file holds, the reader must not raise, must yield exactly one Request or InvalidRow per
data row with the right line number and seq, and must hand valid rows back unchanged.
"""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.spec import (
    InvalidRow,
    Request,
    SpecDefaults,
    canonical_endpoint,
    jsonl_lines,
    read_spec,
)

CAP = 2048  # a small line cap, so "huge" lines stay cheap to generate
DEFAULTS = SpecDefaults(endpoint="chat/completions", model="glm-4.7-flash")
CHAT = "/v4/chat/completions"
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

text = st.text(max_size=20)
finite = st.floats(allow_nan=False, allow_infinity=False)  # JSON has no NaN or Infinity
json_leaf = st.none() | st.booleans() | st.integers() | finite | text
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
non_object = json_value.filter(lambda v: not isinstance(v, dict))
message = st.builds(
    lambda role, content: {"role": role, "content": content},
    st.sampled_from(["system", "user"]),
    text,
)
chat_body = st.builds(
    lambda msgs, extra: {"model": "glm-4.5-air", "messages": msgs, **extra},
    st.lists(message, min_size=1, max_size=3),
    st.fixed_dictionaries(
        {},
        optional={
            "temperature": st.floats(0, 1),
            "max_tokens": st.integers(1, 4096),
            "thinking": st.just({"type": "disabled"}),
        },
    ),
)
emb_body = st.builds(
    lambda inputs: {"model": "embedding-3", "input": inputs},
    st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=64),
)

# Each wrong-typed field names the error's field; the rest of the row stays valid.
WRONG = [
    ("custom_id", finite | st.booleans() | st.lists(text)),
    ("url", st.integers() | text.filter(lambda u: canonical_endpoint(u) is None)),
    ("method", st.sampled_from(["GET", "PUT", "post", ""]) | st.integers()),
    ("body", st.lists(json_value, max_size=3) | text | st.integers()),
    ("body.model", st.integers() | st.just("") | st.lists(text, max_size=2)),
    ("body.messages", st.just([]) | st.integers() | text),
    ("body.max_tokens", st.integers(max_value=0) | st.booleans() | text),
    ("body.temperature", text | st.booleans() | st.lists(st.integers())),
    ("body.stream", st.just(True)),
]
KINDS = [
    "batch", "short", "derived", "emb", "bad_json", "wrong", "missing", "huge", "dup",
    "not_utf8", "not_object", "garbage_body", "garbage_line", "blank",
]  # fmt: skip


@dataclass
class Row:
    """What one generated entry writes and what reading it must give (None: any outcome)."""

    raw: bytes  # the physical line it writes, without its line ending
    ok: bool | None  # True: a Request; False: a InvalidRow; None: either
    field: str | None = None  # the InvalidRow's field, when ok is False and it names one
    whole: bool = False  # the InvalidRow is about the whole line: its field must be None
    custom_id: str | None = None  # for a Request: its id; None means line-N
    endpoint: str = "chat/completions"
    body: Any = None  # for a Request: the body it must carry


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def batch(custom_id: Any, body: Any, url: Any = CHAT, **extra: Any) -> dict[str, Any]:
    head = {} if custom_id is None else {"custom_id": custom_id}
    return {**head, **extra, "url": url, "body": body}


def with_model(body: dict[str, Any]) -> dict[str, Any]:
    """The body a valid row must carry: the default model fills a missing or null model."""
    return {**body, "model": "glm-4.7-flash" if body.get("model") is None else body["model"]}


@st.composite
def rows(draw: st.DrawFn, n: int) -> list[Row]:
    """A valid-or-not entry for row ``n``; ids are ``id-n`` so only deliberate ones collide."""
    kind = draw(st.sampled_from(KINDS))
    cid = f"id-{n}"
    body = draw(chat_body)
    if kind == "batch":
        url = draw(st.sampled_from([CHAT, "/paas/v4/chat/completions", "chat/completions"]))
        return [Row(dumps(batch(cid, body, url)), True, custom_id=cid, body=body)]
    if kind == "short":
        short = {k: v for k, v in body.items() if k != "model"}
        expected = {**short, "model": "glm-4.7-flash"}
        return [Row(dumps({"custom_id": cid, **short}), True, custom_id=cid, body=expected)]
    if kind == "derived":
        return [Row(dumps(batch(None, body)), True, body=body)]
    if kind == "emb":
        emb = draw(emb_body)
        line = dumps(batch(cid, emb, "/api/paas/v4/embeddings"))
        return [Row(line, True, custom_id=cid, endpoint="embeddings", body=emb)]
    if kind == "bad_json":
        full = dumps(batch(cid, body))
        cut = draw(st.integers(1, len(full) - 1))
        return [Row(full[:cut], False, whole=True)]
    if kind == "wrong":
        field, values = draw(st.sampled_from(WRONG))
        row = batch(cid, dict(body))
        if field.startswith("body."):
            row["body"][field.removeprefix("body.")] = draw(values)
        else:
            row[field] = draw(values)
        return [Row(dumps(row), False, field)]
    if kind == "missing":
        missing = [
            ("body.messages", batch(cid, {"model": "glm-4.5-air"})),
            ("body.input", batch(cid, {"model": "embedding-3"}, "/v4/embeddings")),
            ("body.prompt", batch(cid, {"model": "glm-image"}, "/v4/images/generations")),
            ("body", {"custom_id": cid, "url": CHAT}),
        ]
        field, row = draw(st.sampled_from(missing))
        return [Row(dumps(row), False, field)]
    if kind == "huge":
        padded = {**body, "pad": "x" * draw(st.integers(CAP, 3 * CAP))}
        return [Row(dumps(batch(cid, padded)), False, whole=True)]
    if kind == "dup":
        first = Row(dumps(batch(cid, body)), True, custom_id=cid, body=body)
        return [first, Row(dumps(batch(cid, draw(chat_body))), False, "custom_id")]
    if kind == "not_utf8":
        raw = dumps(batch(cid, {**body, "marker": "@@"}))
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80abc"]))
        return [Row(raw.replace(b"@@", bad), False, whole=True)]
    if kind == "not_object":
        value = draw(non_object)
        return [Row(dumps(value), False, whole=True)]
    if kind == "garbage_body":
        garbage = draw(json_value)
        expected = with_model(garbage) if isinstance(garbage, dict) else None
        return [Row(dumps(batch(cid, garbage)), None, custom_id=cid, body=expected)]
    if kind == "garbage_line":
        keys = text.filter(lambda k: k not in ("custom_id", "body", "url"))
        garbage = draw(st.dictionaries(keys, json_value, max_size=4))
        return [Row(dumps(garbage), None, body=with_model(garbage))]
    return [Row(draw(st.sampled_from([b"", b"   ", b"\r", b"\t \r"])), None)]


@st.composite
def specs(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, Row]]]:
    """A whole file and, for each data row, its 1-based line and what reading must give."""
    entries = [row for n in range(draw(st.integers(0, 25))) for row in draw(rows(n))]
    bom = draw(st.booleans())
    out, expected = [b"\xef\xbb\xbf" if bom else b""], []
    for number, row in enumerate(entries, 1):
        out.append(row.raw + draw(st.sampled_from([b"\n", b"\r\n"])))
        if row.raw.strip() or row.ok is not None:
            expected.append((number, row))
    if out[-1].endswith(b"\n") and draw(st.booleans()):
        out[-1] = out[-1].rstrip(b"\r\n")  # a last line without its newline
    return b"".join(out), expected


def check(items: list[Request | InvalidRow], expected: list[tuple[int, Row]]) -> None:
    assert [item.line for item in items] == [number for number, _ in expected]
    assert [item.seq for item in items] == list(range(len(expected)))
    for item, (number, row) in zip(items, expected, strict=True):
        if row.ok is not None:
            assert isinstance(item, Request if row.ok else InvalidRow), (number, row, item)
        if isinstance(item, InvalidRow):
            assert row.field is None or item.field == row.field, (str(item), row)
            assert not row.whole or item.field is None, (str(item), row)
            assert item.message
        elif row.body is not None:
            assert item.body == row.body
            assert item.custom_id == (row.custom_id or f"line-{number}")
            assert item.endpoint == row.endpoint


@SETTINGS
@given(specs(), st.sampled_from([1, 3, 1024]))
def test_jsonl_never_raises_and_accounts_for_every_row(
    spec: tuple[bytes, list[tuple[int, Row]]], batch_size: int
) -> None:
    data, expected = spec
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.jsonl"
        path.write_bytes(data)
        batches = list(read_spec(path, DEFAULTS, batch_size=batch_size, max_line_bytes=CAP))
    assert all(0 < len(b) <= batch_size for b in batches)
    check([item for b in batches for item in b], expected)


parquet_row = st.one_of(
    chat_body.map(lambda b: (json.dumps(b), True, b)),
    chat_body.map(lambda b: (json.dumps(b)[: len(json.dumps(b)) // 2], False, None)),
    non_object.map(lambda v: (json.dumps(v), False, None)),
    st.just((None, False, None)),
    text.filter(lambda t: not t.strip().startswith("{")).map(lambda t: (t, False, None)),
)


@SETTINGS
@given(st.lists(st.tuples(parquet_row, st.booleans()), max_size=30), st.sampled_from([1, 4, 1024]))
def test_parquet_bad_body_strings(
    entries: list[tuple[tuple[str | None, bool, Any], bool]], batch_size: int
) -> None:
    ids = [f"id-{n}" if has_id else None for n, (_, has_id) in enumerate(entries)]
    bodies = pa.array([body for (body, _, _), _ in entries], pa.string())
    table = pa.table({"custom_id": pa.array(ids, pa.string()), "body": bodies})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.parquet"
        pq.write_table(table, path, row_group_size=7)
        items = [i for b in read_spec(path, DEFAULTS, batch_size=batch_size) for i in b]
    expected = [
        (n, Row(b"", ok, field=None if ok else "body", custom_id=cid, body=body))
        for n, (cid, ((_, ok, body), _)) in enumerate(zip(ids, entries, strict=True), 1)
    ]
    check(items, expected)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([b"a", b"bc", b"\n", b"\r\n", b" ", b"\xff", b"{}"]), max_size=60),
    st.booleans(),
    st.integers(3, 16),
    st.integers(0, 12),
)
def test_line_splitter_matches_split_at_any_chunk_size(
    pieces: list[bytes], bom: bool, chunk_size: int, cap: int
) -> None:
    """Lines that cross chunk boundaries, and over-long ones dropped while read, come out as
    ``bytes.split`` would give them (the spec tests only reach this with multi-MiB lines)."""
    data = b"".join(pieces)
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    expected = [(n, raw if len(raw) <= cap else len(raw)) for n, raw in enumerate(lines, 1)]
    got = list(jsonl_lines(io.BytesIO(b"\xef\xbb\xbf" * bom + data), cap, chunk_size))
    assert got == expected
