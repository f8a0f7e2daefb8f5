"""Examples for each rule of the spec reader: row forms, url forms, defaults, ids, every error kind
with its line and field, Parquet bodies, batching, and the file-level errors."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runner.spec import (
    ASYNC_ENDPOINTS,
    ENDPOINTS,
    InvalidRow,
    Request,
    SpecDefaults,
    SpecError,
    canonical_endpoint,
    derive_custom_id,
    read_spec,
    spec_fingerprint,
    validate_spec,
)
from runner.spec.checks import CHECKS, MODELLESS_ENDPOINTS
from runner.spec.ids import IdSet

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
CHAT_URL = "/v4/chat/completions"
BODY = {"model": "glm-4.7-flash", "messages": [{"role": "user", "content": "Hi"}]}
CHAT_DEFAULTS = SpecDefaults(endpoint="chat/completions", model="glm-4.7-flash")


def line(custom_id: Any = None, body: Any = BODY, url: Any = CHAT_URL, **extra: Any) -> bytes:
    row: dict[str, Any] = {} if custom_id is None else {"custom_id": custom_id}
    return json.dumps({**row, **extra, "url": url, "body": body}).encode()


def write(tmp_path: Path, lines: list[bytes], name: str = "spec.jsonl", end: bytes = b"\n") -> Path:
    path = tmp_path / name
    path.write_bytes(b"".join(item + end for item in lines))
    return path


NO_DEFAULTS = SpecDefaults()


def read_all(path: Path, defaults: SpecDefaults = NO_DEFAULTS, **kw: Any) -> list[Any]:
    return [item for batch in read_spec(path, defaults, **kw) for item in batch]


def only(path: Path, defaults: SpecDefaults = NO_DEFAULTS, **kw: Any) -> Any:
    (item,) = read_all(path, defaults, **kw)
    return item


def error_at(item: Any, line_no: int, field: str | None) -> InvalidRow:
    assert isinstance(item, InvalidRow), item
    assert (item.line, item.field) == (line_no, field), str(item)
    return item


# --- endpoints -------------------------------------------------------------------------------


def test_endpoint_sets() -> None:
    assert len(ENDPOINTS) == 14  # 12 model kinds, agents and agents/conversation
    assert {
        "async/chat/completions",
        "async/images/generations",
        "videos/generations",
    } == ASYNC_ENDPOINTS
    assert ASYNC_ENDPOINTS < ENDPOINTS
    assert CHECKS.keys() == ENDPOINTS
    assert {"web_search", "reader", "agents", "agents/conversation"} == MODELLESS_ENDPOINTS


@pytest.mark.parametrize("kind", sorted(ENDPOINTS))
@pytest.mark.parametrize(
    "form", ["/v4/{}", "/v1/{}", "/api/paas/v4/{}", "/paas/v4/{}", "/{}", "{}"]
)
def test_every_url_form(kind: str, form: str) -> None:
    assert canonical_endpoint(form.format(kind)) == kind


def test_unknown_urls() -> None:
    assert canonical_endpoint(" /V4/Chat/Completions/ ") == "chat/completions"
    for url in ["/v4/chat/complete", "/v2/chat/completions", "", "/", "/v4/files", "chat"]:
        assert canonical_endpoint(url) is None


# --- the two line forms -----------------------------------------------------------------------


def test_batch_api_line_runs_unchanged(tmp_path: Path) -> None:
    body = {**BODY, "temperature": 0.2, "thinking": {"type": "disabled"}}
    req = only(write(tmp_path, [line("req-1", body, method="POST")]))
    assert req == Request(0, 1, "req-1", "chat/completions", "glm-4.7-flash", body)


def test_method_is_optional_and_url_may_come_from_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, [json.dumps({"custom_id": "a", "body": BODY}).encode(), line("b")])
    a, b = read_all(path, SpecDefaults(endpoint="/v4/chat/completions"))
    assert (a.endpoint, b.endpoint) == ("chat/completions", "chat/completions")


def test_short_line_takes_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            b'{"custom_id": "s1", "messages": [{"role": "user", "content": "Hi"}]}',
            b'{"messages": [{"role": "user", "content": "Yo"}], "model": "glm-4.5-air"}',
        ],
    )
    first, second = read_all(path, CHAT_DEFAULTS)
    assert first == Request(0, 1, "s1", "chat/completions", "glm-4.7-flash", BODY)
    assert "custom_id" not in first.body
    assert (second.custom_id, second.model) == ("line-2", "glm-4.5-air")
    assert second.body["model"] == "glm-4.5-air"


def test_default_body_merges_under_rows_and_is_not_shared(tmp_path: Path) -> None:
    defaults = SpecDefaults(
        endpoint="chat/completions",
        model="glm-4.7-flash",
        body={"temperature": 0.1, "max_tokens": 64, "thinking": {"type": "disabled"}},
    )
    path = write(tmp_path, [line("a"), line("b", {**BODY, "temperature": 0.9}), b'{"messages":[]}'])
    a, b, c = read_all(path, defaults)
    assert a.body == {
        **BODY,
        "temperature": 0.1,
        "max_tokens": 64,
        "thinking": {"type": "disabled"},
    }
    assert b.body["temperature"] == 0.9
    assert a.body["thinking"] is not b.body["thinking"]
    error_at(c, 3, "body.messages")


def test_short_rows_imply_chat_or_embeddings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [b'{"model": "glm-4.7-flash", "messages": [{"role": "user", "content": "Hi"}]}',
         b'{"model": "embedding-3", "input": "hello"}',
         b'{"model": "glm-image", "prompt": "a red kite"}',
         b'{"model": "glm-4.7-flash", "messages": [], "input": "hello"}'],
    )  # fmt: skip
    chat, emb, image, both = read_all(path)
    assert (chat.endpoint, emb.endpoint) == ("chat/completions", "embeddings")
    assert "no endpoint" in error_at(image, 3, "url").message  # image or video: ambiguous
    error_at(both, 4, "url")
    # --endpoint still decides for every short row: this one is then a chat without messages.
    error_at(only(write(tmp_path, [b'{"input": "hi"}']), CHAT_DEFAULTS), 1, "body.messages")


def test_default_model_is_not_written_for_modelless_endpoints(tmp_path: Path) -> None:
    path = write(tmp_path, [b'{"search_engine": "search-prime", "search_query": "GLM news"}'])
    req = only(path, SpecDefaults(endpoint="web_search", model="glm-4.7-flash"))
    assert (req.endpoint, req.model) == ("web_search", "")
    assert "model" not in req.body


def test_bad_defaults_are_spec_errors(tmp_path: Path) -> None:
    path = write(tmp_path, [line("a")])
    with pytest.raises(SpecError, match="unknown default endpoint"):
        read_spec(path, SpecDefaults(endpoint="/v4/nope"))
    with pytest.raises(SpecError, match="default model"):
        read_spec(path, SpecDefaults(model=""))


def test_ids(tmp_path: Path) -> None:
    assert derive_custom_id(12) == "line-12"
    path = write(tmp_path, [line(7), line(True), line(), line("line-3"), line("x" * 256)])
    seven, flag, derived, clash, longest = read_all(path)
    assert seven.custom_id == "7"
    error_at(flag, 2, "custom_id")
    assert derived.custom_id == "line-3"
    # An explicit id equal to an earlier derived one is a duplicate: outputs are matched by id.
    # The error carries no id, so nothing keyed by id can mistake it for the first row.
    assert error_at(clash, 4, "custom_id").custom_id is None
    assert isinstance(longest, Request)


def test_first_duplicate_stays_valid_even_after_an_invalid_row(tmp_path: Path) -> None:
    path = write(tmp_path, [line("a", body="oops"), line("a"), line("b"), line("b")])
    bad_body, dup_a, b, dup_b = read_all(path)
    error_at(bad_body, 1, "body")
    error_at(dup_a, 2, "custom_id")
    assert isinstance(b, Request)
    assert "duplicate custom_id 'b'" in error_at(dup_b, 4, "custom_id").message


def test_skipped_rows_are_not_parsed_and_keep_every_seq(tmp_path: Path) -> None:
    """`skip` (a resume's done bitmap) leaves rows out unparsed, even broken ones; blank
    lines still are not rows, so the seqs of what is read are those of a full read."""
    lines = [line("a"), b"{broken", b"", line("c"), line("d", body="oops"), line("e")]
    path = write(tmp_path, lines)
    full = read_all(path)
    skip = bytearray([0b0000_0011])  # seqs 0 and 1: "a" and the broken line
    kept = read_all(path, skip=skip)
    assert [(x.seq, x.line) for x in kept] == [(x.seq, x.line) for x in full[2:]]
    assert [x.custom_id for x in kept] == ["c", "d", "e"] and isinstance(kept[1], InvalidRow)
    # A row past the bitmap's end is read; an empty bitmap skips nothing.
    assert len(read_all(path, skip=bytearray([0xFF]))) == 0
    assert len(read_all(path, skip=bytearray())) == len(full)


def test_skipped_rows_keep_their_ids_through_taken(tmp_path: Path) -> None:
    """A row repeating the id of a skipped row is a duplicate when `taken` says the id was
    claimed; the first row to claim an id in this read stays valid."""
    path = write(tmp_path, [line("a"), line("b"), line("a"), line("c"), line("c")])
    asked: list[tuple[str, int]] = []

    def taken(cid: str, seq: int) -> bool:
        asked.append((cid, seq))
        return cid == "a"

    kept = read_all(path, skip=bytearray([0b0000_0001]), taken=taken)
    b, dup_a, c, dup_c = kept
    assert isinstance(b, Request) and isinstance(c, Request)
    assert "duplicate custom_id 'a'" in error_at(dup_a, 3, "custom_id").message
    error_at(dup_c, 5, "custom_id")
    assert asked == [("b", 1), ("a", 2), ("c", 3)]  # a repeat within the read asks nothing


@pytest.mark.parametrize("spill_at", [1 << 19, 300])
def test_id_set_grows_and_keeps_every_id(spill_at: int) -> None:
    # With spill_at=300 most ids leave memory for the file, in 16 spills, and are found there.
    ids = IdSet(capacity=8, spill_at=spill_at)
    assert all(ids.add(f"id-{i}") for i in range(5000))
    assert len(ids) == 5000
    assert not any(ids.add(f"id-{i}") for i in range(0, 5000, 7))
    assert ids.add("id-5000") and len(ids) == 5001
    assert all(ids.add(f"new-{i}") for i in range(2000))
    assert not any(ids.add(f"new-{i}") for i in range(2000))
    assert len(ids) == 7001


# --- every error kind -------------------------------------------------------------------------


def _bad_lines() -> list[tuple[bytes, str | None, str]]:
    spec = importlib.util.spec_from_file_location("make_samples", SAMPLES / "make_samples.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BAD_LINES  # type: ignore[no-any-return]


def test_bad_sample_reports_each_line_and_field() -> None:
    bad = _bad_lines()
    assert (SAMPLES / "bad.jsonl").read_bytes() == b"".join(raw + b"\n" for raw, _, _ in bad)
    items = read_all(SAMPLES / "bad.jsonl")
    expected = [(n, field) for n, (raw, field, shows) in enumerate(bad, 1) if shows]
    assert [(e.line, e.field) for e in items if isinstance(e, InvalidRow)] == expected
    assert [r.line for r in items if isinstance(r, Request)] == [1]
    assert [item.seq for item in items] == list(range(len(items)))
    by_line = {item.line: item for item in items}
    assert "invalid JSON at column" in by_line[2].message
    assert "not valid UTF-8" in by_line[3].message
    assert "did you mean /v4/chat/completions?" in by_line[7].message
    assert by_line[13].message == "missing model: set body.model or pass --model"
    assert "set stream to false" in by_line[20].message
    assert "at most 64 inputs per request" in by_line[24].message


def test_row_error_text() -> None:
    assert str(InvalidRow(0, 12, None, "body.model", "missing model")) == (
        "line 12, field body.model: missing model"
    )
    assert str(InvalidRow(0, 3, None, None, "invalid JSON")) == "line 3: invalid JSON"


def chat(*messages: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "glm-4.7-flash", "messages": list(messages), **extra}


USER = {"role": "user", "content": "Hi"}
M0 = "body.messages[0]"


@pytest.mark.parametrize(
    ("url", "body", "field"),
    [
        (CHAT_URL, {**BODY, "messages": "Hi"}, "body.messages"),
        (CHAT_URL, chat("Hi"), M0),
        (CHAT_URL, chat({"content": "Hi"}), f"{M0}.role"),
        (CHAT_URL, chat({"role": ["user"], "content": "Hi"}), f"{M0}.role"),
        (CHAT_URL, chat({"role": "user"}), f"{M0}.content"),
        (CHAT_URL, chat({"role": "user", "content": []}), f"{M0}.content"),
        (CHAT_URL, chat({"role": "assistant", "content": None}), f"{M0}.content"),
        (CHAT_URL, chat({"role": "user", "content": [{"type": "text"}]}), f"{M0}.content[0].text"),
        (CHAT_URL, chat({"role": "user", "content": ["hi"]}), f"{M0}.content[0]"),
        (CHAT_URL, chat(USER, max_tokens=-5), "body.max_tokens"),
        (CHAT_URL, chat(USER, max_tokens=10.0), "body.max_tokens"),
        (CHAT_URL, chat(USER, top_p=True), "body.top_p"),
        (CHAT_URL, {**BODY, "model": ""}, "body.model"),
        ("/v4/async/chat/completions", chat(USER, stream=True), "body.stream"),
        ("/v4/tokenizer", {"model": "glm-4.6"}, "body.messages"),
        ("/v4/embeddings", {"model": "embedding-3"}, "body.input"),
        ("/v4/embeddings", {"model": "embedding-3", "input": ""}, "body.input"),
        ("/v4/embeddings", {"model": "embedding-3", "input": []}, "body.input"),
        ("/v4/embeddings", {"model": "embedding-3", "input": ["a", 1.5]}, "body.input[1]"),
        ("/v4/embeddings", {"model": "embedding-3", "input": ["a", ""]}, "body.input[1]"),
        ("/v4/images/generations", {"model": "glm-image", "prompt": 3}, "body.prompt"),
        ("/v4/async/images/generations", {"model": "glm-image", "prompt": ""}, "body.prompt"),
        ("/v4/videos/generations", {"model": "cogvideox-3", "prompt": ["x"]}, "body.prompt"),
        ("/v4/videos/generations", {"model": "cogvideox-3", "image_url": 5}, "body.image_url"),
        ("/v4/web_search", {"search_query": "q"}, "body.search_engine"),
        ("/v4/layout_parsing", {"model": "glm-ocr"}, "body.file"),
        ("/v4/reader", {}, "body.url"),
        ("/v4/moderations", {"model": "moderation"}, "body.input"),
        ("/v4/layout_parsing", {"file": "https://example.com/a.pdf"}, "body.model"),
    ],
)
def test_endpoint_checks_reject(tmp_path: Path, url: str, body: Any, field: str) -> None:
    error_at(only(write(tmp_path, [line("r", body, url)])), 1, field)


CALL = {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}
PARTS = [
    {"type": "text", "text": "?"},
    {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
    {"type": "video_url", "video_url": {"url": "https://x/y.mp4"}},
    {"type": "a_part_type_added_later"},
]


@pytest.mark.parametrize(
    ("url", "body"),
    [
        (CHAT_URL, chat(USER, temperature=1, top_p=0.5, max_tokens=1, stream=False)),
        (CHAT_URL, chat({"role": "system", "content": "Be brief."}, USER)),
        (CHAT_URL, chat(USER, CALL, {"role": "tool", "content": "4", "tool_call_id": "c"})),
        (CHAT_URL, chat(USER, {"role": "assistant", "tool_calls": [{"id": "c"}]})),
        (CHAT_URL, {"model": "glm-4.6v", "messages": [{"role": "user", "content": PARTS}]}),
        (CHAT_URL, chat(USER, new_platform_field={"anything": [1, None]})),
        (CHAT_URL, {"model": "a-model-released-tomorrow", "messages": [USER]}),
        ("/v4/tokenizer", {"model": "glm-4.6", "messages": [USER]}),
        ("/v4/embeddings", {"model": "embedding-3", "input": [[1, 2], [3]]}),
        ("/v4/embeddings", {"model": "embedding-2", "input": ["x"] * 100}),
        ("/v4/embeddings", {"model": "embedding-3", "input": ["x"] * 64}),
        ("/v4/images/generations", {"model": "cogview-4-250304", "prompt": "fox"}),
        (
            "/v4/videos/generations",
            {
                "model": "cogvideox-3",
                "image_url": ["https://x.example/a.png", "https://x.example/b.png"],
            },
        ),
        ("/v4/web_search", {"search_engine": "search-prime", "search_query": "q"}),
        ("/v4/reader", {"url": "https://example.com"}),
        ("/v4/layout_parsing", {"model": "glm-ocr", "file": "https://example.com/a.pdf"}),
        ("/v4/moderations", {"model": "moderation", "input": "text"}),
    ],
)
def test_endpoint_checks_accept(tmp_path: Path, url: str, body: Any) -> None:
    req = only(write(tmp_path, [line("r", body, url)]))
    assert isinstance(req, Request), str(req)
    assert req.body == body


def test_line_level_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [b'{"url": "/v4/embeddings", "body": {"model": "embedding-3", "input": "x"} trailing',
         b"42", b"null", b'"a string"', b"{}", b'{"url": 5, "body": {}}', line("m", method="post"),
         line("n", url=None)],
    )  # fmt: skip
    items = read_all(path)
    assert "column 74" in error_at(items[0], 1, None).message
    for item, n in zip(items[1:4], [2, 3, 4], strict=True):
        assert "not a request object" in error_at(item, n, None).message
    error_at(items[4], 5, "url")  # an empty object is a short line with no default endpoint
    error_at(items[5], 6, "url")
    error_at(items[6], 7, "method")
    assert items[7].endpoint == "chat/completions"  # "url": null reads as absent; messages: chat


# --- physical lines ---------------------------------------------------------------------------


def test_blank_lines_keep_line_numbers_but_are_not_rows(tmp_path: Path) -> None:
    path = write(tmp_path, [b"", line("a"), b"   ", b"\t", line("b"), b"{", b"", line("c")])
    items = read_all(path)
    assert [(i.seq, i.line) for i in items] == [(0, 2), (1, 5), (2, 6), (3, 8)]
    assert [type(i) for i in items] == [Request, Request, InvalidRow, Request]


def test_bom_crlf_and_no_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "spec.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + line("a") + b"\r\n\r\n" + line("b") + b"\r\n" + line("c"))
    items = read_all(path)
    assert [(type(i), i.line, i.custom_id) for i in items] == [
        (Request, 1, "a"),
        (Request, 3, "b"),
        (Request, 4, "c"),
    ]


def test_a_bom_after_line_one_is_an_error(tmp_path: Path) -> None:
    error_at(read_all(write(tmp_path, [line("a"), b"\xef\xbb\xbf" + line("b")]))[1], 2, None)


@pytest.mark.parametrize("size", [1 << 10, 3 << 20])  # inside one chunk, and across chunks
def test_over_long_line_is_one_error_and_reading_goes_on(tmp_path: Path, size: int) -> None:
    cap = size // 2
    huge = line("big", {**BODY, "pad": "x" * size})
    path = write(tmp_path, [line("a"), huge, line("c"), b"y" * size])
    items = read_all(path, max_line_bytes=cap)
    assert [type(i) for i in items] == [Request, InvalidRow, Request, InvalidRow]
    assert f"{len(huge):,} bytes, over the {cap:,}-byte cap" in error_at(items[1], 2, None).message
    error_at(items[3], 4, None)
    assert [item.seq for item in items] == [0, 1, 2, 3]


def test_long_line_under_the_cap_spanning_chunks(tmp_path: Path) -> None:
    body = {**BODY, "pad": "x" * (5 << 20)}
    req = only(write(tmp_path, [line("big", body)]), max_line_bytes=6 << 20)
    assert isinstance(req, Request) and req.body == body


def test_memory_stays_flat(tmp_path: Path) -> None:
    """A 10 MB spec and a 40 MB line both read in a few MB: nothing holds the file whole."""
    rows = [line(f"r{i}", {**BODY, "pad": "x" * 2000}) for i in range(5000)]
    path = write(tmp_path, [*rows, b"z" * (40 << 20), line("last")])
    tracemalloc.start()
    try:
        count = sum(len(batch) for batch in read_spec(path, batch_size=64, max_line_bytes=1 << 20))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 5002
    assert peak < 8 << 20, f"peak {peak:,} bytes"


# --- batching ---------------------------------------------------------------------------------


def test_batches(tmp_path: Path) -> None:
    path = write(tmp_path, [line(f"r{i}") for i in range(10)])
    assert [len(b) for b in read_spec(path, batch_size=4)] == [4, 4, 2]
    assert [len(b) for b in read_spec(path, batch_size=10)] == [10]
    assert list(read_spec(write(tmp_path, [], "empty.jsonl"))) == []
    with pytest.raises(ValueError, match="batch_size"):
        read_spec(path, batch_size=0)


# --- Parquet ----------------------------------------------------------------------------------


def requests(path: Path, **kw: Any) -> list[tuple[Any, ...]]:
    return [(r.seq, r.custom_id, r.endpoint, r.model, r.body) for r in read_all(path, **kw)]


def test_parquet_samples_match_the_jsonl() -> None:
    expected = requests(SAMPLES / "chat.jsonl")
    assert len(expected) == 20
    assert requests(SAMPLES / "chat.parquet") == expected
    assert requests(SAMPLES / "chat_struct.parquet") == expected
    assert [r.line for r in read_all(SAMPLES / "chat.parquet")] == list(range(1, 21))


def test_parquet_body_strings_with_errors(tmp_path: Path) -> None:
    path = tmp_path / "spec.parquet"
    good = json.dumps(BODY)
    table = pa.table(
        {
            "custom_id": ["a", None, "c", "d", "e"],
            "body": [good, good, "{not json", None, "[1, 2]"],
        }
    )
    pq.write_table(table, path)
    a, b, c, d, e = read_all(path, SpecDefaults(endpoint="chat/completions"), batch_size=2)
    assert (a.custom_id, b.custom_id, b.line) == ("a", "line-2", 2)
    assert "body is not valid JSON" in error_at(c, 3, "body").message
    error_at(d, 4, "body")
    error_at(e, 5, "body")


def test_parquet_struct_bodies_drop_unified_nulls(tmp_path: Path) -> None:
    bodies = [
        {**BODY, "thinking": {"type": "disabled"}},
        {"model": "glm-4.5-air", "messages": [{"role": "user", "content": "x", "name": "n"}]},
    ]
    path = tmp_path / "spec.parquet"
    pq.write_table(pa.table({"url": [CHAT_URL, "/v4/chat/completions"], "body": bodies}), path)
    assert [r.body for r in read_all(path)] == bodies


def test_parquet_flat_columns_are_the_body(tmp_path: Path) -> None:
    path = tmp_path / "flat.pq"
    table = pa.table(
        {
            "custom_id": [1, 2, 3],
            "url": [None, "/v4/embeddings", None],
            "model": ["glm-4.7-flash", "embedding-3", None],
            "messages": [BODY["messages"], None, BODY["messages"]],
            "input": [None, "hello", None],
        }
    )
    pq.write_table(table, path)
    chat, emb, third = read_all(path, SpecDefaults(endpoint="chat/completions"))
    assert chat == Request(0, 1, "1", "chat/completions", "glm-4.7-flash", BODY)
    assert (emb.endpoint, emb.body) == ("embeddings", {"model": "embedding-3", "input": "hello"})
    error_at(third, 3, "body.model")


def test_parquet_batches_ignore_row_groups(tmp_path: Path) -> None:
    path = tmp_path / "spec.parquet"
    table = pa.table({"custom_id": [f"r{i}" for i in range(10)], "body": [json.dumps(BODY)] * 10})
    pq.write_table(table, path, row_group_size=3)
    batches = list(read_spec(path, SpecDefaults(endpoint="chat/completions"), batch_size=4))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert [r.seq for b in batches for r in b] == list(range(10))


# --- the file as a whole ----------------------------------------------------------------------


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not found"):
        read_spec(tmp_path / "missing.jsonl")
    with pytest.raises(SpecError, match="directory"):
        read_spec(tmp_path)
    (tmp_path / "spec.csv").write_text("a,b\n")
    with pytest.raises(SpecError, match="cannot tell the format"):
        read_spec(tmp_path / "spec.csv")
    with pytest.raises(SpecError, match="unknown spec format"):
        read_spec(tmp_path / "spec.csv", fmt="csv")
    fake = write(tmp_path, [line("a")], "fake.parquet")
    with pytest.raises(SpecError, match="not a readable Parquet file"):
        read_spec(fake)
    assert only(fake, fmt="jsonl").custom_id == "a"


def test_parquet_damaged_part_way_is_a_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "spec.parquet"
    table = pa.table({"custom_id": [f"r{i}" for i in range(30)], "body": [json.dumps(BODY)] * 30})
    pq.write_table(table, path, row_group_size=10)
    offset = pq.read_metadata(path).row_group(2).column(1).data_page_offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 40] = b"\xff" * 40
    path.write_bytes(bytes(data))
    seen = 0
    with pytest.raises(SpecError, match="damaged after row 20"):
        for batch in read_spec(path, batch_size=5):
            seen += len(batch)
    assert seen == 20


def test_format_by_extension_or_override(tmp_path: Path) -> None:
    for name in ["a.jsonl", "b.JSON", "c.ndjson", "d.txt"]:
        path = write(tmp_path, [line("x")], name)
        assert only(path, fmt="jsonl" if name.endswith(".txt") else None).custom_id == "x"
    pq.write_table(pa.table({"body": [json.dumps(BODY)]}), tmp_path / "t.data")
    assert isinstance(only(tmp_path / "t.data", CHAT_DEFAULTS, fmt="parquet"), Request)


def test_fingerprint(tmp_path: Path) -> None:
    path = write(tmp_path, [line(f"r{i}") for i in range(100)])
    assert spec_fingerprint(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(SpecError):
        spec_fingerprint(tmp_path / "missing.jsonl")


# --- validate ---------------------------------------------------------------------------------


def test_validate_report() -> None:
    report = validate_spec(SAMPLES / "mixed.jsonl")
    assert (report.total, report.valid, report.invalid, report.errors) == (7, 7, 0, [])
    assert report.by_endpoint == {"chat/completions": 5, "embeddings": 2}
    assert report.by_model == {
        "glm-4.7-flash": 2,
        "glm-4.5-air": 2,
        "embedding-3": 2,
        "glm-4-plus": 1,
    }
    assert report.render().startswith("7 rows: 7 valid, 0 invalid; endpoints: chat/completions 5")
    bad = validate_spec(SAMPLES / "bad.jsonl")
    text = bad.render().splitlines()
    assert text[0].startswith("line 2: invalid JSON")
    assert text[-1].startswith("27 rows: 1 valid, 26 invalid")
    data = bad.to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["errors"][0] == {
        "seq": 1,
        "line": 2,
        "custom_id": None,
        "field": None,
        "message": data["errors"][0]["message"],
        "code": "invalid_row",
    }
    assert data["errors_truncated"] is False


def test_validate_caps_stored_errors(tmp_path: Path) -> None:
    report = validate_spec(write(tmp_path, [b"{"] * 1005 + [line("ok")]))
    assert (report.total, report.valid, report.invalid, len(report.errors)) == (1006, 1, 1005, 1000)
    assert "... and 5 more invalid rows not shown" in report.render()
    assert report.to_json()["errors_truncated"] is True


# --- a resume of a big local spec: marks to seek to, the digest kept with the version ---------


def _read(path: Path, skip: bytearray, marks: Path | None) -> list[tuple[Any, ...]]:
    got = []
    for batch in read_spec(path, skip=skip, marks=marks, max_line_bytes=200):
        got += [(r.seq, r.line, getattr(r, "custom_id", None), str(r)) for r in batch]
    return got


def test_a_local_resume_seeks_past_done_rows_to_the_same_rows(tmp_path: Path) -> None:
    """The count leaves marks; a resume starts at the last one before its first pending
    row and yields what reading from byte 0 yields (blank lines, CRLF, an over-long line
    and a BOM included); marks of a file written since are ignored."""
    from runner.spec import count_lines
    from runner.spec.reader import _resume_mark

    lines = [b"\xef\xbb\xbf" + json.dumps({"custom_id": "m0", "messages": []}).encode()]
    for i in range(1, 400):
        body = {"custom_id": f"m{i}", "body": {"model": "glm-4", "prompt": "x" * (i % 37)}}
        line = json.dumps(body).encode()
        lines.append(line + b"\r" if i % 5 == 0 else line)
        if i % 11 == 0:
            lines.append(b"   ")
    lines[123] = b'{"custom_id": "long", "body": "' + b"y" * 300 + b'"}'
    spec = tmp_path / "m.jsonl"
    spec.write_bytes(b"\n".join(lines) + b"\n")
    marks = tmp_path / "spec.marks"
    n = count_lines(spec, marks, every=2048)
    assert n == count_lines(spec)
    for done_upto in (0, 1, 57, 200, 333, n):
        skip = bytearray((n + 7) // 8)
        for seq in [*range(done_upto), done_upto + 3, n - 1]:
            if seq < n:
                skip[seq >> 3] |= 1 << (seq & 7)
        assert _read(spec, skip, marks) == _read(spec, skip, None)
        start = _resume_mark(spec, marks, skip)
        if done_upto >= 57:
            assert start is not None and 0 < start[0] <= done_upto and start[1] > 2048
    os.utime(spec, ns=(0, spec.stat().st_mtime_ns + 1))  # written again: another version
    assert _resume_mark(spec, marks, b"\xff") is None


def test_a_resume_takes_the_digest_kept_with_the_specs_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tmp_path / "s.jsonl"
    spec.write_bytes(b'{"messages": []}\n' * 100)
    known = tmp_path / "spec.identity"
    spec_fingerprint(spec, known)
    assert not known.exists()  # written this instant: it may change within the same mtime
    os.utime(spec, (time.time() - 60, time.time() - 60))
    digest = spec_fingerprint(spec, known)
    assert digest == hashlib.sha256(spec.read_bytes()).hexdigest() == spec_fingerprint(spec)
    assert known.read_text().split()[1] == digest

    def unread(*_: Any) -> None:
        raise AssertionError("the spec was read again")

    monkeypatch.setattr(hashlib, "file_digest", unread)
    assert spec_fingerprint(spec, known) == digest  # same size, mtime and inode: not read
    monkeypatch.undo()
    spec.write_bytes(b'{"messages": [1]}\n' * 100)  # changed: read again
    assert spec_fingerprint(spec, known) == hashlib.sha256(spec.read_bytes()).hexdigest()
    assert spec_fingerprint(spec, known) != digest
