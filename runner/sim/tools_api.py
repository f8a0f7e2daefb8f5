"""Tools API handlers: tokenizer, web search, layout parsing and the web reader.

Same two-function form as :mod:`runner.sim.handlers`. The tokenizer shares
``content.read_messages`` with chat so its ``prompt_tokens`` always equal what chat bills.
"""

from __future__ import annotations

import time
from typing import Any

from runner.sim import content
from runner.sim.errors import ApiError
from runner.sim.files import MB, inline_file_sha256
from runner.sim.handlers import Answer, Call, Inspected, required_text, with_markers
from runner.sim.ledger import Bill
from runner.sim.state import SimState

__all__ = [
    "answer_layout",
    "answer_reader",
    "answer_tokenizer",
    "answer_web_search",
    "inspect_layout",
    "inspect_reader",
    "inspect_tokenizer",
    "inspect_web_search",
]


def inspect_tokenizer(body: dict[str, Any]) -> Inspected:
    model = required_text(body, "model")
    try:
        prompt = content.read_messages(body.get("messages"), body.get("tools"))
    except ValueError as exc:
        raise ApiError(1214, str(exc)) from None
    return Inspected(model, prompt.marked, prompt)


def answer_tokenizer(call: Call, state: SimState) -> Answer:
    prompt = call.prompt
    assert prompt is not None
    # prompt_tokens is what chat/completions bills for the same messages (images and
    # videos included); image_tokens and video_tokens break out their share of it.
    usage = {
        "prompt_tokens": prompt.tokens,
        "image_tokens": prompt.image_tokens,
        "video_tokens": prompt.video_tokens,
        "total_tokens": prompt.tokens,
    }
    payload = {
        "id": state.new_id(),
        "created": int(time.time()),
        "request_id": call.request_id,
        "usage": usage,
    }
    return Answer(payload, None)


def inspect_web_search(body: dict[str, Any]) -> Inspected:
    engine = required_text(body, "search_engine")
    query = required_text(body, "search_query")
    count = body.get("count")
    if count is not None and (
        isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 50
    ):
        raise ApiError(1214, "count must be an integer in [1, 50]")
    return Inspected(engine, with_markers(query))


def answer_web_search(call: Call, state: SimState) -> Answer:
    count = call.body.get("count") or 10
    payload = {
        "id": state.new_id(),
        "created": int(time.time()),
        "request_id": call.request_id,
        "search_result": content.search_results(call.body["search_query"], count, call.digest),
    }
    return Answer(payload, Bill(searches=1))


def inspect_layout(body: dict[str, Any]) -> Inspected:
    model = required_text(body, "model")
    file = required_text(body, "file")
    # The spec's caps: an image 10 MB, a PDF 50 MB.
    digest = inline_file_sha256(file, "file", 10 * MB, pdf_cap=50 * MB)
    return Inspected(model, [], None, () if digest is None else (digest,))


def answer_layout(call: Call, state: SimState) -> Answer:
    text = content.words(call.digest, 20)
    detail = {
        "index": 0,
        "label": "text",
        "bbox_2d": [0.1, 0.1, 0.9, 0.3],
        "content": text,
        "height": 800,
        "width": 600,
    }
    used = content.tokens(text)
    payload = {
        "id": state.new_id(),
        "created": int(time.time()),
        "model": call.model,
        "md_results": f"# Page 1\n\n{text}\n",
        "layout_details": [[detail]],
        "data_info": {"num_pages": 1, "pages": [{"width": 600, "height": 800}]},
        "usage": {
            "prompt_tokens": content.IMAGE_TOKENS,
            "completion_tokens": used,
            "prompt_tokens_details": {"cached_tokens": 0},
            "total_tokens": content.IMAGE_TOKENS + used,
        },
        "request_id": call.request_id,
    }
    return Answer(payload, Bill(prompt_tokens=content.IMAGE_TOKENS, completion_tokens=used))


def inspect_reader(body: dict[str, Any]) -> Inspected:
    return Inspected("web-reader", with_markers(required_text(body, "url")))


def answer_reader(call: Call, state: SimState) -> Answer:
    url = call.body["url"]
    text = content.words(call.digest, 40)
    payload = {
        "id": state.new_id(),
        "created": int(time.time()),
        "request_id": call.request_id,
        "model": call.model,
        "reader_result": {
            "content": f"# {text[:40]}\n\n{text}\n",
            "description": text[:80],
            "title": text[:40],
            "url": url,
            "external": {},
            "metadata": {"description": text[:80]},
        },
    }
    return Answer(payload, Bill())
