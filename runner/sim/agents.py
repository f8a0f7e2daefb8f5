"""The agents API (`/api/v1/agents`, `agents/async-result`, `agents/conversation`).

Shapes follow zai-openapi.json: `general_translation` answers at once with choices and
usage; `vidu_template_agent` answers `{status: pending, agent_id, async_id}` and its video
shows up in `agents/async-result` after `task_seconds` (`[[sim:task-fail]]` in a text makes
it `failed`); `slides_glm_agent` streams server-sent events unless `stream` is false, and
`agents/conversation` exports a conversation's slides as a PDF and page images.

Every created agent task is counted in the ledger under its request id (`agents.tasks`),
so a test can prove that no task was created twice.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from runner.sim import content
from runner.sim.errors import ApiError
from runner.sim.handlers import Answer, Call, Inspected, required_text, with_markers
from runner.sim.ledger import Bill
from runner.sim.state import SimState
from runner.sim.tasks import Task

__all__ = [
    "answer_agent",
    "answer_agent_result",
    "answer_conversation",
    "inspect_agent",
    "inspect_agent_result",
    "inspect_conversation",
    "sse_body",
]

_AGENTS = ("general_translation", "vidu_template_agent", "slides_glm_agent")
_TEMPLATES = ("french_kiss", "bodyshake", "sexy_me")


def _texts(body: dict[str, Any], parts: tuple[str, ...]) -> list[str]:
    """The texts of the agent's user messages; 1214 for anything the schema refuses."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(1214, "messages must be a non-empty array")
    texts: list[str] = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role", "user") != "user":
            raise ApiError(1214, "agent messages must have role user")
        items = message.get("content")
        if not isinstance(items, list) or not items:
            raise ApiError(1214, "content must be a non-empty array")
        for item in items:
            kind = item.get("type") if isinstance(item, dict) else None
            if kind not in parts or not isinstance(item.get(kind), str):
                raise ApiError(1214, f"content items must be of type {' or '.join(parts)}")
            if kind == "text":
                texts.append(item["text"])
    return texts


def inspect_agent(body: dict[str, Any]) -> Inspected:
    agent = required_text(body, "agent_id")
    if agent not in _AGENTS:
        raise ApiError(1214, f"unknown agent_id {agent!r}")
    variables = body.get("custom_variables") or {}
    if not isinstance(variables, dict):
        raise ApiError(1214, "custom_variables must be an object")
    if agent == "vidu_template_agent":
        texts = _texts(body, ("text", "image_url"))
        if variables.get("template") not in _TEMPLATES:
            raise ApiError(1214, f"custom_variables.template must be one of {_TEMPLATES}")
    else:
        texts = _texts(body, ("text",))
    if agent == "general_translation" and body.get("stream"):
        raise ApiError(1210, "streaming not supported by simulator")
    prompt = content.Prompt(sum(map(content.tokens, texts)) + 3, 0, 0, with_markers(*texts), "user")
    return Inspected(agent, prompt.marked, prompt)


def answer_agent(call: Call, state: SimState) -> Answer:
    if call.model == "vidu_template_agent":
        return _vidu(call, state)
    prompt_tokens = call.prompt.tokens if call.prompt is not None else 0
    if call.model == "general_translation":
        glossary = (call.body.get("custom_variables") or {}).get("glossary")
        if glossary is not None:
            known = state.batches.files.get(glossary) if isinstance(glossary, str) else None
            if known is None or known.key_id != call.key_id or known.purpose != "agent":
                raise ApiError(1214, f"glossary {glossary!r} is not an agent file of this account")
        return _translation(call, prompt_tokens)
    return _slides(call, state, prompt_tokens)


def _translation(call: Call, prompt_tokens: int) -> Answer:
    text = content.words(call.digest, max(1, prompt_tokens - 3))
    reason = "sensitive" if call.markers.sensitive else "stop"
    message = {"role": "assistant", "content": {"type": "text", "text": text}}
    completion = content.tokens(text)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "total_calls": 1,
    }
    payload = {
        "id": call.request_id,
        "agent_id": call.model,
        "status": "success",
        # The spec names the field `messages`, the official SDK reads `message`: both.
        "choices": [{"index": 0, "finish_reason": reason, "messages": message, "message": message}],
        "usage": usage,
    }
    return Answer(payload, Bill(prompt_tokens=prompt_tokens, completion_tokens=completion))


def _vidu(call: Call, state: SimState) -> Answer:
    parts = [p for m in call.body["messages"] for p in m["content"]]
    if not any(p["type"] == "image_url" for p in parts):
        # The platform's form of "task not created": a 200 with status failed and an error.
        error = {"code": "1214", "message": "an effects video needs an image_url part"}
        return Answer({"status": "failed", "agent_id": call.model, "error": error}, None)
    async_id = state.new_id()
    task = Task(
        id=async_id,
        kind="agent_video",
        model=call.model,
        request_id=call.request_id,
        key_id=call.key_id,
        ready_at=time.monotonic() + state.config.task_seconds,
        fail=call.markers.task_fail,
    )
    state.tasks.add(task)
    state.ledger.agent_task(call.request_id)
    payload = {"status": "pending", "agent_id": call.model, "async_id": async_id}
    return Answer(payload, None if task.fail else Bill(videos=1))


def _slides(call: Call, state: SimState, prompt_tokens: int) -> Answer:
    conversation = call.body.get("conversation_id") or "conv-" + state.new_id()
    text = content.words(call.digest, 12)
    page = f"<section><h1>{content.words(call.digest[::-1], 4)}</h1><p>{text}</p></section>"
    completion = content.tokens(text) + content.tokens(page)
    frames: list[dict[str, Any]] = [
        {"phase": "thinking", "content": [{"type": "text", "text": "Planning the deck."}]},
        {
            "phase": "tool",
            "content": [
                {
                    "type": "object",
                    "object": {"tool_name": "insert_page", "input": text, "output": page,
                               "position": [1]},
                }
            ],
        },
        {"phase": "answer", "content": [{"type": "text", "text": text}]},
    ]  # fmt: skip
    head = {"id": call.request_id, "conversation_id": conversation, "agent_id": call.model}
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }
    messages = [{"role": "assistant", **frame} for frame in frames]
    bill = Bill(prompt_tokens=prompt_tokens, completion_tokens=completion)
    if call.body.get("stream") is False:
        whole = {**head, "choices": [{"index": 0, "finish_reason": "stop", "message": messages}]}
        return Answer({**whole, "usage": usage}, bill)
    chunks: list[dict[str, Any]] = [
        {**head, "choices": [{"index": 0, "message": [message]}]} for message in messages[:-1]
    ]
    last = {"index": 0, "finish_reason": "stop", "message": [messages[-1]]}
    chunks.append({**head, "choices": [last], "usage": usage})
    return Answer({"_sse": chunks}, bill)


def sse_body(chunks: list[dict[str, Any]]) -> bytes:
    """A streamed answer: one `data:` frame per chunk, then `[DONE]`."""
    frames = [b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks]
    return b"".join(frames) + b"data: [DONE]\n\n"


def inspect_agent_result(body: dict[str, Any]) -> Inspected:
    required_text(body, "async_id")
    return Inspected(required_text(body, "agent_id"), [])


def answer_agent_result(call: Call, state: SimState) -> Answer:
    task = state.tasks.get(call.body["async_id"], call.key_id)
    if task.kind != "agent_video" or task.model != call.model:
        raise ApiError(404, "Task not found: the id is unknown", status=404)
    now = time.monotonic()
    state.tasks.settle(now)
    state.ledger.tasks["polls"] += 1
    payload: dict[str, Any] = {"agent_id": task.model, "async_id": task.id}
    if now < task.ready_at:
        return Answer({**payload, "status": "pending"}, None)
    if task.fail:
        error = {"code": "1301", "message": "the template could not be applied to this image"}
        return Answer({**payload, "status": "failed", "error": error}, None)
    url = state.signer.issue(call.root, f"{task.id}/0.mp4")
    video = {"type": "video_url", "video_url": url}
    choice = {
        "index": 0,
        "finish_reason": "stop",
        "message": [{"role": "assistant", "content": [video]}],
    }
    return Answer({**payload, "status": "success", "choices": [choice]}, None)


def inspect_conversation(body: dict[str, Any]) -> Inspected:
    required_text(body, "conversation_id")
    agent = required_text(body, "agent_id")
    if agent != "slides_glm_agent":
        raise ApiError(1214, "the conversation call serves slides_glm_agent only")
    return Inspected(agent, [])


def answer_conversation(call: Call, state: SimState) -> Answer:
    variables = call.body.get("custom_variables") or {}
    file_id = state.new_id()
    items = [{"type": "image_url", "image_url": state.signer.issue(call.root, f"{file_id}/0.png")}]
    if isinstance(variables, dict) and variables.get("include_pdf"):
        pdf = state.signer.issue(call.root, f"{file_id}/0.pdf")
        items.insert(0, {"type": "file_url", "file_url": pdf})
    payload = {
        "conversation_id": call.body["conversation_id"],
        "agent_id": call.model,
        "choices": [{"message": [{"role": "assistant", "content": items}]}],
    }
    return Answer(payload, None)
