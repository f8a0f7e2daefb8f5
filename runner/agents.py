"""The `/v1/agents` family: where agent rows go, which are async, what their answers hold.

Agents live beside the model API, not under it: `https://api.z.ai/api/v1/agents` next to
`https://api.z.ai/api/paas/v4` (API-NOTES §1). A job has one base URL, so agent paths are
written relative to it (`../../v1/agents` from `.../paas/v4`), and the transports resolve
them (`Target.path`); one connection pool, one key header, for both.

A row's `agent_id` stands where other rows have a model: it picks the lane, the tier cap
and the price (prices.json prices agents by id). `general_translation` and
`slides_glm_agent` answer at once; `vidu_template_agent` answers with an `async_id` that
`POST agents/async-result` is polled with, under the task protocol of tasks.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson

from .spec.checks import AGENT_ENDPOINTS

__all__ = [
    "AGENT_ENDPOINTS",
    "ASYNC_AGENTS",
    "KNOWN_AGENTS",
    "SLIDES",
    "TRANSLATION",
    "VIDU",
    "agent_status",
    "agent_video_urls",
    "agents_prefix",
    "conversation_files",
    "fold_sse",
    "request_path",
]

TRANSLATION = "general_translation"
VIDU = "vidu_template_agent"
SLIDES = "slides_glm_agent"
KNOWN_AGENTS = (TRANSLATION, VIDU, SLIDES)
ASYNC_AGENTS = frozenset({VIDU})
POLL_PATH = "agents/async-result"

# Terminal statuses of `agents/async-result` (CommonAgentResultResponse.status).
_STATUS = {"success": "SUCCESS", "failed": "FAIL", "pending": "PROCESSING"}


def agents_prefix(base_url: str) -> str:
    """The agents base relative to the API base: `../../v1/` from a path ending in `/paas/v4`.

    Any other base (a proxy that mounts the API elsewhere) is taken to serve the agents
    beside its own paths as `agents`, so such a gateway can route them as it likes.
    """
    path = urlsplit(base_url).path.rstrip("/")
    if path.endswith("/paas/v4"):
        return "../../v1/"
    return ""


def request_path(endpoint: str, prefix: str) -> str:
    """The request path of a row kind: agent kinds under `prefix`, the rest under the base."""
    if endpoint in AGENT_ENDPOINTS or endpoint == POLL_PATH:
        return "/" + prefix + endpoint
    return "/" + endpoint


def agent_status(body: Mapping[str, Any]) -> str:
    """An agent task's status in the task protocol's words (SUCCESS, FAIL, PROCESSING)."""
    raw = body.get("status")
    return _STATUS.get(str(raw).lower(), "PROCESSING" if raw is None else str(raw).upper())


def _contents(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every content item of every message of every choice, in order."""
    out: list[dict[str, Any]] = []
    choices = body.get("choices")
    for choice in choices if isinstance(choices, list) else []:
        if not isinstance(choice, dict):
            continue
        messages = choice.get("message", choice.get("messages"))
        if isinstance(messages, dict):
            messages = [messages]
        for message in messages if isinstance(messages, list) else []:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, dict):
                content = [content]
            out.extend(c for c in content or [] if isinstance(c, dict))
    return out


def agent_video_urls(body: Mapping[str, Any]) -> list[str]:
    """The video URLs of a `success` async result (content items of type video_url)."""
    urls = []
    for item in _contents(body):
        url = item.get("video_url")
        if isinstance(url, dict):  # tolerate the chat-style {"url": ...} form
            url = url.get("url")
        if isinstance(url, str) and url:
            urls.append(url)
    return urls


def conversation_files(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(kind, url) of the files a slides conversation export names: file_url, image_url."""
    files = []
    for item in _contents(body):
        for kind in ("file_url", "image_url"):
            url = item.get(kind)
            if isinstance(url, str) and url:
                files.append((kind, url))
    return files


def fold_sse(raw: bytes) -> bytes | None:
    """One JSON answer from a server-sent-events body (the slides agent streams by default).

    Frames are `data: {...}` lines; the answer keeps the last frame's ids and every frame's
    messages in order, so the result reads like a non-streamed answer. An `error` in any
    frame becomes the answer's error. None when the body holds no JSON frame at all.
    """
    folded: dict[str, Any] | None = None
    messages: list[Any] = []
    finish = None
    for line in raw.splitlines():
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if not data or data == b"[DONE]":
            continue
        try:
            frame = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(frame, dict):
            continue
        if folded is None:
            folded = {}
        folded.update({k: v for k, v in frame.items() if k != "choices"})
        choices = frame.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict):
                continue
            message = choice.get("message", choice.get("messages", choice.get("delta")))
            if isinstance(message, list):
                messages.extend(message)
            elif isinstance(message, dict):
                messages.append(message)
            finish = choice.get("finish_reason") or finish
    if folded is None:
        return None
    folded["choices"] = [{"index": 0, "finish_reason": finish, "message": messages}]
    return orjson.dumps(folded)
