"""Model endpoint handlers: validate a body, then answer it in the platform's shapes.

Each endpoint is two plain functions. ``inspect`` runs before admission and only looks
at the body (400s, the model that picks the concurrency slot, texts that may carry
markers); ``answer`` runs once the request holds its slot and builds the JSON payload plus
what it bills. Shapes follow zai-openapi.json and API-NOTES section 3.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from runner.sim import content, structured
from runner.sim.errors import ApiError
from runner.sim.faults import Markers
from runner.sim.files import MB, inline_file_sha256
from runner.sim.ledger import Bill
from runner.sim.state import SimState
from runner.sim.tasks import Task

__all__ = [
    "Answer",
    "Call",
    "Endpoint",
    "Inspected",
    "answer_async_chat",
    "answer_async_image",
    "answer_chat",
    "answer_embeddings",
    "answer_image",
    "answer_video",
    "inspect_chat",
    "inspect_embeddings",
    "inspect_image",
    "inspect_video",
    "poll",
    "required_text",
    "with_markers",
]

MAX_EMBEDDING_ITEMS = 64
EMBEDDING_3_DIMENSIONS = (256, 512, 1024, 2048)
MAX_EMBEDDING_TOKENS = 3072


class Inspected(NamedTuple):
    model: str
    marked: list[str]
    prompt: content.Prompt | None = None
    # sha256 of each file that arrived inline (files.py), for the ledger.
    files: tuple[str, ...] = ()


@dataclass(slots=True)
class Call:
    """One admitted request as ``answer`` sees it."""

    body: dict[str, Any]
    model: str
    request_id: str
    digest: bytes
    key_id: str
    root: str
    markers: Markers
    prompt: content.Prompt | None


@dataclass(slots=True)
class Answer:
    payload: dict[str, Any]
    bill: Bill | None  # None: nothing billed (tokenizer, a task destined to fail)


class Endpoint(NamedTuple):
    name: str
    inspect: Callable[[dict[str, Any]], Inspected]
    answer: Callable[[Call, SimState], Answer]
    billable: bool
    # Counted in the ledger's per-request-id and per-body maps (a poll is not a submission).
    tracked: bool = True
    # Takes a multipart/form-data body (speech to text) into this JSON-able body.
    form: Callable[[list[Any]], dict[str, Any]] | None = None


def required_text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        raise ApiError(1213, f"The field '{name}' is required")
    if not isinstance(value, str) or not value:
        raise ApiError(1214, f"The field '{name}' must be a non-empty string")
    return value


def with_markers(*texts: str) -> list[str]:
    return [t for t in texts if content.MARKER in t]


def _optional_number(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ApiError(1214, f"The field '{name}' must be a number in [{low}, {high}]")


# --- chat -------------------------------------------------------------------------------


def inspect_chat(body: dict[str, Any]) -> Inspected:
    if body.get("stream"):
        raise ApiError(1210, "streaming not supported by simulator")
    model = required_text(body, "model")
    tools = body.get("tools")
    if tools is not None and (not isinstance(tools, list) or len(tools) > 128):
        raise ApiError(1214, "tools must be an array of at most 128 tools")
    try:
        prompt = content.read_messages(body.get("messages"), tools)
    except ValueError as exc:
        raise ApiError(1214, str(exc)) from None
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (
        isinstance(max_tokens, bool)
        or not isinstance(max_tokens, int)
        or not 1 <= max_tokens <= 131072
    ):
        raise ApiError(1214, "max_tokens must be an integer in [1, 131072]")
    _optional_number(body, "temperature", 0.0, 1.0)
    _optional_number(body, "top_p", 0.0, 1.0)
    fmt = body.get("response_format")
    if fmt is not None and (
        not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema")
    ):
        raise ApiError(1214, "response_format.type must be 'text' or 'json_object'")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise ApiError(1214, "response_format.json_schema.schema must be an object")
    return Inspected(model, prompt.marked, prompt)


def _chat_result(call: Call, state: SimState) -> tuple[dict[str, Any], Bill]:
    """``choices`` and ``usage`` for a chat call, shared by the sync and async forms."""
    prompt = call.prompt
    assert prompt is not None
    done = content.complete_chat(
        call.body,
        call.digest,
        prompt.last_role,
        sensitive=call.markers.sensitive,
        answer_words=state.config.answer_words,
    )
    spoil = call.markers.spoil_once
    text = done.message.get("content")
    opening = structured.opening_key(call.model, call.body.get("messages"))
    if spoil and isinstance(text, str) and state.first_time(opening):
        done.message["content"] = structured.spoil_json(text, spoil)
    usage = {
        "prompt_tokens": prompt.tokens,
        "completion_tokens": done.completion_tokens,
        "completion_tokens_details": {"reasoning_tokens": done.reasoning_tokens},
        "prompt_tokens_details": {"cached_tokens": 0},
        "total_tokens": prompt.tokens + done.completion_tokens,
    }
    choices = [{"index": 0, "message": done.message, "finish_reason": done.finish_reason}]
    bill = Bill(prompt_tokens=prompt.tokens, completion_tokens=done.completion_tokens)
    return {"choices": choices, "usage": usage}, bill


def answer_chat(call: Call, state: SimState) -> Answer:
    result, bill = _chat_result(call, state)
    payload = {
        "id": state.new_id(),
        "request_id": call.request_id,
        "created": int(time.time()),
        "model": call.model,
        "object": "chat.completion",
        **result,
    }
    return Answer(payload, bill)


def _submit(call: Call, state: SimState, kind: str, result: dict[str, Any]) -> Task:
    task_id = state.new_id()
    task = Task(
        id=task_id,
        kind=kind,
        model=call.model,
        request_id=call.request_id,
        key_id=call.key_id,
        ready_at=time.monotonic() + state.config.task_seconds,
        fail=call.markers.task_fail,
        result=result,
    )
    state.tasks.add(task)
    return task


def _accepted(task: Task) -> dict[str, Any]:
    return {
        "model": task.model,
        "id": task.id,
        "request_id": task.request_id,
        "task_status": "PROCESSING",
    }


def answer_async_chat(call: Call, state: SimState) -> Answer:
    # The outcome is computed (and billed) at submission; polling only reveals it.
    result, bill = _chat_result(call, state)
    task = _submit(call, state, "chat", result)
    return Answer(_accepted(task), None if task.fail else bill)


# --- embeddings -------------------------------------------------------------------------


def _embedding_dimensions(body: dict[str, Any], model: str) -> int:
    dims = body.get("dimensions")
    if model == "embedding-2":
        if dims not in (None, 1024):
            raise ApiError(1214, "embedding-2 only supports dimensions=1024")
        return 1024
    if dims is None:
        return 2048
    if dims not in EMBEDDING_3_DIMENSIONS or isinstance(dims, bool):
        raise ApiError(1214, "dimensions must be one of 256, 512, 1024, 2048")
    return int(dims)


def _embedding_inputs(body: dict[str, Any]) -> list[str | list[int]]:
    raw = body.get("input")
    if raw is None:
        raise ApiError(1213, "The field 'input' is required")
    items: list[Any] = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
    if raw and isinstance(raw, list) and all(isinstance(x, int) for x in raw):
        items = [raw]  # a single pre-tokenised input
    if not items:
        raise ApiError(1214, "Input cannot be empty")
    if len(items) > MAX_EMBEDDING_ITEMS:
        raise ApiError(1214, f"input may hold at most {MAX_EMBEDDING_ITEMS} items")
    for item in items:
        if isinstance(item, str):
            if not item:
                raise ApiError(1214, "Input cannot be empty")
            if content.tokens(item) > MAX_EMBEDDING_TOKENS:
                raise ApiError(1214, f"each input may hold at most {MAX_EMBEDDING_TOKENS} tokens")
        elif not (isinstance(item, list) and item and all(isinstance(x, int) for x in item)):
            raise ApiError(1214, "input items must be strings or arrays of token ids")
    return items


def inspect_embeddings(body: dict[str, Any]) -> Inspected:
    model = required_text(body, "model")
    _embedding_dimensions(body, model)
    items = _embedding_inputs(body)
    return Inspected(model, [t for t in items if isinstance(t, str) and content.MARKER in t])


def answer_embeddings(call: Call, state: SimState) -> Answer:
    dims = _embedding_dimensions(call.body, call.model)
    seed = state.config.seed
    data = []
    used = 0
    for index, item in enumerate(_embedding_inputs(call.body)):
        text = item if isinstance(item, str) else " ".join(map(str, item))
        used += content.tokens(item) if isinstance(item, str) else len(item)
        vector = content.embedding(text, dims, seed)
        data.append({"index": index, "object": "embedding", "embedding": vector})
    usage = {"prompt_tokens": used, "completion_tokens": 0, "total_tokens": used}
    payload = {"model": call.model, "object": "list", "data": data, "usage": usage}
    return Answer(payload, Bill(prompt_tokens=used))


# --- images and videos ------------------------------------------------------------------


def inspect_image(body: dict[str, Any]) -> Inspected:
    model = required_text(body, "model")
    return Inspected(model, with_markers(required_text(body, "prompt")))


def answer_image(call: Call, state: SimState) -> Answer:
    url = state.signer.issue(call.root, f"{state.new_id()}/0.png")
    payload = {
        "created": int(time.time()),
        "data": [{"url": url}],
        "content_filter": [{"role": "assistant", "level": 3}],
    }
    return Answer(payload, Bill(images=1))


def answer_async_image(call: Call, state: SimState) -> Answer:
    task = _submit(call, state, "image", {})
    return Answer(_accepted(task), None if task.fail else Bill(images=1))


def inspect_video(body: dict[str, Any]) -> Inspected:
    model = required_text(body, "model")
    prompt = body.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ApiError(1214, "prompt must be a string")
    image = body.get("image_url")
    if not prompt and not image:
        raise ApiError(1214, "prompt or image_url is required")
    images = image if isinstance(image, list) else [image] if image else []
    files = []
    for item in images:
        if not isinstance(item, str):
            raise ApiError(1214, "image_url must be a string or an array of strings")
        digest = inline_file_sha256(item, "image_url", 50 * MB)
        if digest is not None:
            files.append(digest)
    return Inspected(model, with_markers(prompt or ""), None, tuple(files))


def answer_video(call: Call, state: SimState) -> Answer:
    task = _submit(call, state, "video", {})
    return Answer(_accepted(task), None if task.fail else Bill(videos=1))


def poll(task: Task, state: SimState, root: str, now: float) -> dict[str, Any]:
    """The ``async-result`` body; a finished task gets freshly signed URLs on every poll."""
    payload: dict[str, Any] = {"id": task.id, "model": task.model, "request_id": task.request_id}
    if now < task.ready_at:
        payload["task_status"] = "PROCESSING"
        return payload
    if task.fail:
        payload["task_status"] = "FAIL"
        return payload
    payload["task_status"] = "SUCCESS"
    if task.kind == "video":
        payload["video_result"] = [
            {
                "url": state.signer.issue(root, f"{task.id}/0.mp4"),
                "cover_image_url": state.signer.issue(root, f"{task.id}/0.jpg"),
            }
        ]
    elif task.kind == "image":
        payload["image_result"] = [{"url": state.signer.issue(root, f"{task.id}/0.png")}]
    else:
        payload["created"] = int(time.time())
        payload["object"] = "chat.completion"
        payload.update(task.result)
    return payload
