"""Endpoint kinds as data: the url forms a spec may use, and a light check per kind.

The checks mirror the platform's request schemas (API-NOTES §2) only far enough to catch rows
that would surely be rejected, so a job fails them before paying for a connection. They never
reject what the platform accepts: model names are not checked against a list, ranges that the
OpenAI-compatible providers widen are not enforced, and unknown fields pass through untouched.

Each check takes the merged body and the resolved model and returns ``(field, message)`` for the
first problem it finds, or ``None``. Checks test ``type(x) is T``, not ``isinstance``: JSON
``true`` is a Python ``bool``, which ``isinstance(x, int)`` would accept as an integer.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

__all__ = [
    "AGENT_ENDPOINTS",
    "ASYNC_ENDPOINTS",
    "CHECKS",
    "ENDPOINTS",
    "FORM_ENDPOINTS",
    "MODELLESS_ENDPOINTS",
    "Check",
    "canonical_endpoint",
    "endpoint_hint",
    "json_kind",
    "short_repr",
]

ENDPOINTS: frozenset[str] = frozenset(
    {
        "chat/completions",
        "async/chat/completions",
        "embeddings",
        "images/generations",
        "async/images/generations",
        "videos/generations",
        "tokenizer",
        "web_search",
        "layout_parsing",
        "reader",
        "moderations",
        "agents",
        "agents/conversation",
        "audio/transcriptions",
    }
)
# Kinds sent as multipart/form-data rather than JSON (the body's `file` is a local file).
FORM_ENDPOINTS: frozenset[str] = frozenset({"audio/transcriptions"})
# Kinds that return a task id to poll rather than a result (API-NOTES §1).
ASYNC_ENDPOINTS: frozenset[str] = frozenset(
    {"async/chat/completions", "async/images/generations", "videos/generations"}
)
# Kinds whose request has no `model` field: a default model must not be written into their bodies.
MODELLESS_ENDPOINTS: frozenset[str] = frozenset(
    {"web_search", "reader", "agents", "agents/conversation"}
)
# Kinds whose `agent_id` stands for the model (lane, tier cap, price); see agents.py.
AGENT_ENDPOINTS: frozenset[str] = frozenset({"agents", "agents/conversation"})

# Every accepted spelling maps straight to its kind: the per-row lookup is one dict probe, no regex.
_PREFIXES = ("", "/", "/v4/", "/v1/", "/paas/v4/", "/api/paas/v4/", "/api/v1/")
_FORMS: dict[str, str] = {prefix + kind: kind for kind in ENDPOINTS for prefix in _PREFIXES}


def canonical_endpoint(url: str) -> str | None:
    """Map an accepted url form ("/v4/embeddings", "/api/paas/v4/embeddings", "embeddings") to
    its kind; ``None`` when it names no known endpoint."""
    kind = _FORMS.get(url)
    if kind is None:
        # Rare path: tolerate the spacing, letter case and trailing slash of hand-written specs.
        kind = _FORMS.get(url.strip().lower().rstrip("/"))
    return kind


def endpoint_hint(url: Any) -> str:
    """What to write instead of an unknown url: the nearest kind if one is close, else the list."""
    tail = url.strip().lower().rstrip("/") if type(url) is str else ""
    for prefix in sorted(_PREFIXES, key=len, reverse=True):
        if prefix and tail.startswith(prefix):
            tail = tail[len(prefix) :]
            break
    close = difflib.get_close_matches(tail, ENDPOINTS, n=1, cutoff=0.6)
    if close:
        return f"did you mean /{'v1' if close[0].startswith('agents') else 'v4'}/{close[0]}?"
    return "use /v4/<kind> with kind one of " + ", ".join(sorted(ENDPOINTS))


_JSON_KINDS = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}


def json_kind(value: Any) -> str:
    """JSON name of a value's type, for messages that say what was found instead."""
    return "null" if value is None else _JSON_KINDS.get(type(value), "object")


def short_repr(value: Any, limit: int = 60) -> str:
    """repr() cut to a readable length: rows are untrusted and a bad value may be megabytes long."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# A check returns (field, message) for the row's first problem, or None.
Check = Callable[[dict[str, Any], str], tuple[str, str] | None]

_ROLES = frozenset({"system", "user", "assistant", "tool"})
_URL_PARTS = frozenset({"image_url", "video_url", "file_url"})
_EMBEDDING_3_MAX_INPUTS = 64  # a platform limit per request (API-NOTES §2.3)


def _required_str(body: dict[str, Any], key: str) -> tuple[str, str] | None:
    value = body.get(key)
    if type(value) is str and value:
        return None
    if value is None:
        return f"body.{key}", f"missing {key}: add a non-empty string {key} to the body"
    return f"body.{key}", f"{key} must be a non-empty string, got {json_kind(value)}"


def _check_parts(parts: list[Any], path: str) -> tuple[str, str] | None:
    """Vision content: a non-empty list of typed parts (API-NOTES §2.2)."""
    if not parts:
        return path, "content list is empty: give a string or at least one content part"
    for j, part in enumerate(parts):
        if type(part) is not dict or type(part.get("type")) is not str:
            return f"{path}[{j}]", 'content part must be an object with a string "type"'
        ptype = part["type"]
        if ptype == "text" and type(part.get("text")) is not str:
            return f"{path}[{j}].text", 'a "text" part needs a string text'
        if ptype in _URL_PARTS:
            ref = part.get(ptype)
            if type(ref) is not dict or type(ref.get("url")) is not str:
                return f"{path}[{j}].{ptype}.url", f'{ptype} part needs {{"url": "..."}}'
    return None


def _check_message(msg: Any, i: int) -> tuple[str, str] | None:
    if type(msg) is not dict:
        return f"body.messages[{i}]", f"message must be an object, got {json_kind(msg)}"
    role = msg.get("role")
    if type(role) is not str or role not in _ROLES:
        return (
            f"body.messages[{i}].role",
            f"role must be one of system, user, assistant, tool; got {short_repr(role)}",
        )
    content = msg.get("content")
    if type(content) is str:
        pass
    elif type(content) is list:
        err = _check_parts(content, f"body.messages[{i}].content")
        if err:
            return err
    elif content is None and role == "assistant" and msg.get("tool_calls"):
        pass  # an assistant turn that only calls tools carries no content
    else:
        return (
            f"body.messages[{i}].content",
            f"content must be a string or a list of content parts, got {json_kind(content)}",
        )
    if role == "tool" and type(msg.get("tool_call_id")) is not str:
        return (
            f"body.messages[{i}].tool_call_id",
            "a tool message needs the string tool_call_id it answers",
        )
    return None


def _check_messages(body: dict[str, Any]) -> tuple[str, str] | None:
    msgs = body.get("messages")
    if type(msgs) is not list or not msgs:
        what = "missing" if msgs is None else f"got {json_kind(msgs)}" if msgs else "empty list"
        return (
            "body.messages",
            f"messages must be a non-empty list of {{role, content}} objects ({what})",
        )
    for i, msg in enumerate(msgs):
        err = _check_message(msg, i)
        if err:
            return err
    return None


def _check_chat(body: dict[str, Any], model: str) -> tuple[str, str] | None:
    err = _check_messages(body)
    if err:
        return err
    value = body.get("max_tokens")
    if value is not None and (type(value) is not int or value < 1):
        got = value if type(value) is int else json_kind(value)
        return "body.max_tokens", f"max_tokens must be a positive integer, got {got}"
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is not None and type(value) is not float and type(value) is not int:
            return f"body.{key}", f"{key} must be a number, got {json_kind(value)}"
    if body.get("stream") is True:
        return "body.stream", "the runner does not stream batch rows: set stream to false"
    return None


def _check_tokenizer(body: dict[str, Any], model: str) -> tuple[str, str] | None:
    return _check_messages(body)


def _check_embeddings(body: dict[str, Any], model: str) -> tuple[str, str] | None:
    value = body.get("input")
    if type(value) is str:
        return None if value else ("body.input", "input is an empty string: give text to embed")
    if type(value) is not list or not value:
        what = "missing" if value is None else f"got {json_kind(value)}" if value else "empty list"
        return "body.input", f"input must be a string or a non-empty list of strings ({what})"
    for j, item in enumerate(value):
        # Token-id arrays are what OpenAI-compatible providers also accept, so they pass.
        if type(item) is str:
            if not item:
                return f"body.input[{j}]", "input item is an empty string"
        elif type(item) is not int and type(item) is not list:
            return f"body.input[{j}]", f"input items must be strings, got {json_kind(item)}"
    if len(value) > _EMBEDDING_3_MAX_INPUTS and model.startswith("embedding-3"):
        return "body.input", (
            f"at most {_EMBEDDING_3_MAX_INPUTS} inputs per request for {model}, got {len(value)}: "
            "split the row"
        )
    return None


def _check_prompt(body: dict[str, Any], model: str) -> tuple[str, str] | None:
    return _required_str(body, "prompt")


def _check_video(body: dict[str, Any], model: str) -> tuple[str, str] | None:
    prompt, image = body.get("prompt"), body.get("image_url")
    if prompt is not None and type(prompt) is not str:
        return "body.prompt", f"prompt must be a string, got {json_kind(prompt)}"
    if not prompt and not image:
        return "body.prompt", "a video needs a prompt, an image_url, or both"
    if image is not None and type(image) is not str and type(image) is not list:
        return (
            "body.image_url",
            f"image_url must be a string or a list of strings, got {json_kind(image)}",
        )
    return None


def _check_web_search(body: dict[str, Any], model: str) -> tuple[str, str] | None:
    return _required_str(body, "search_query") or _required_str(body, "search_engine")


def _check_layout(body: dict[str, Any], model: str) -> tuple[str, str] | None:
    return _required_str(body, "file")


def _check_reader(body: dict[str, Any], model: str) -> tuple[str, str] | None:
    return _required_str(body, "url")


_MAX_HOTWORDS = 100  # AudioTranscriptionRequest.hotwords maxItems


def _check_transcription(body: dict[str, Any], model: str) -> tuple[str, str] | None:
    """AudioTranscriptionRequest: a local `file` (sent as a form upload) or `file_base64`."""
    file, inline = body.get("file"), body.get("file_base64")
    if file is None and inline is None:
        return "body.file", "missing file: name a local .wav or .mp3 file, or give file_base64"
    for key, value in (("file", file), ("file_base64", inline)):
        if value is not None and (type(value) is not str or not value):
            return f"body.{key}", f"{key} must be a non-empty string, got {json_kind(value)}"
    if type(file) is str and (
        file.startswith(("http://", "https://", "data:")) or len(file) > 4096
    ):
        return "body.file", (
            "file is uploaded from a local path (the platform fetches no URL): name a .wav "
            "or .mp3 under the files root, or put base64 audio in file_base64"
        )
    prompt = body.get("prompt")
    if prompt is not None and type(prompt) is not str:
        return "body.prompt", f"prompt must be a string, got {json_kind(prompt)}"
    hotwords = body.get("hotwords")
    if hotwords is not None:
        if type(hotwords) is not list or any(type(w) is not str for w in hotwords):
            return "body.hotwords", "hotwords must be a list of strings"
        if len(hotwords) > _MAX_HOTWORDS:
            return "body.hotwords", f"at most {_MAX_HOTWORDS} hotwords, got {len(hotwords)}"
    if body.get("stream") is True:
        return "body.stream", "the runner does not stream batch rows: set stream to false"
    return None


def _check_moderations(body: dict[str, Any], model: str) -> tuple[str, str] | None:
    if body.get("input") is None:
        return "body.input", "missing input: add the text or content to moderate"
    return None


# -- agents (API-NOTES §1: TranslationAgentRequest, SpecialEffectsVideosAgentRequest,
# GlmSlideAgentRequest, GlmSlideAgentConversationRequest) --------------------------------

_AGENTS = ("general_translation", "vidu_template_agent", "slides_glm_agent")
_VIDU_TEMPLATES = ("french_kiss", "bodyshake", "sexy_me")


def _check_agent_messages(body: dict[str, Any], parts: frozenset[str]) -> tuple[str, str] | None:
    """Agent messages: user turns whose content is a list of typed parts (`parts` allowed)."""
    msgs = body.get("messages")
    if type(msgs) is not list or not msgs:
        what = "missing" if msgs is None else f"got {json_kind(msgs)}" if msgs else "empty list"
        return "body.messages", f"messages must be a non-empty list of user messages ({what})"
    kinds = " or ".join(sorted(parts))
    for i, msg in enumerate(msgs):
        where = f"body.messages[{i}]"
        if type(msg) is not dict:
            return where, f"message must be an object, got {json_kind(msg)}"
        if msg.get("role", "user") != "user":
            return f"{where}.role", f"agent messages take role user, got {short_repr(msg['role'])}"
        content = msg.get("content")
        if type(content) is not list or not content:
            return (
                f"{where}.content",
                f'content must be a non-empty list of {kinds} parts, e.g. [{{"type": "text", '
                f'"text": "..."}}], got {json_kind(content)}',
            )
        for j, part in enumerate(content):
            ptype = part.get("type") if type(part) is dict else None
            if ptype not in parts:
                return f"{where}.content[{j}]", f"a content part must have type {kinds}"
            if type(part.get(ptype)) is not str:
                return f"{where}.content[{j}].{ptype}", f"a {ptype} part needs a string {ptype}"
    return None


def _custom_variables(body: dict[str, Any]) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
    variables = body.get("custom_variables")
    if variables is None:
        return None, None
    if type(variables) is not dict:
        return None, ("body.custom_variables", "custom_variables must be an object")
    return variables, None


def _check_agents(body: dict[str, Any], model: str) -> tuple[str, str] | None:
    agent = body.get("agent_id")
    if type(agent) is not str or agent not in _AGENTS:
        got = "missing" if agent is None else f"got {short_repr(agent)}"
        return "body.agent_id", f"agent_id must be one of {', '.join(_AGENTS)} ({got})"
    variables, err = _custom_variables(body)
    if err:
        return err
    if agent == "vidu_template_agent":
        err = _check_agent_messages(body, frozenset({"text", "image_url"}))
        template = (variables or {}).get("template")
        if err is None and template not in _VIDU_TEMPLATES:
            return (
                "body.custom_variables.template",
                f"template must be one of {', '.join(_VIDU_TEMPLATES)}, got {short_repr(template)}",
            )
        return err
    err = _check_agent_messages(body, frozenset({"text"}))
    if err:
        return err
    if agent == "general_translation":
        if body.get("stream") is True:
            return "body.stream", "the runner does not stream batch rows: set stream to false"
        glossary = (variables or {}).get("glossary")
        if glossary is not None and (type(glossary) is not str or not glossary):
            return "body.custom_variables.glossary", "glossary must be a file id or a file path"
    return None


def _check_conversation(body: dict[str, Any], model: str) -> tuple[str, str] | None:
    agent = body.get("agent_id")
    if agent != "slides_glm_agent":
        got = short_repr(agent)
        return "body.agent_id", f"the conversation call serves slides_glm_agent only, got {got}"
    _, err = _custom_variables(body)
    return err or _required_str(body, "conversation_id")


CHECKS: dict[str, Check] = {
    "chat/completions": _check_chat,
    "async/chat/completions": _check_chat,
    "embeddings": _check_embeddings,
    "images/generations": _check_prompt,
    "async/images/generations": _check_prompt,
    "videos/generations": _check_video,
    "tokenizer": _check_tokenizer,
    "web_search": _check_web_search,
    "layout_parsing": _check_layout,
    "reader": _check_reader,
    "moderations": _check_moderations,
    "agents": _check_agents,
    "agents/conversation": _check_conversation,
    "audio/transcriptions": _check_transcription,
}
