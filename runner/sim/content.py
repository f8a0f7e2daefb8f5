"""Deterministic stand-ins for what the models produce, and the one token counter.

Everything here is a pure function of the request (its digest) and the seed, so the same
body always gets the same answer and tests can compare responses byte for byte. The token
counter is deliberately simple (about one token per four UTF-8 bytes) but it is the only
one: chat billing and the tokenizer endpoint both call :func:`read_messages`, so their
``prompt_tokens`` agree exactly, as the platform's do.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import random
import struct
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson

from runner.sim.structured import VOCAB as _VOCAB
from runner.sim.structured import sample_value, schema_in

__all__ = [
    "Completion",
    "Prompt",
    "complete_chat",
    "embedding",
    "file_bytes",
    "read_messages",
    "search_results",
    "tokens",
    "words",
]

# Prompt accounting constants. Arbitrary but fixed: what matters is that usage is a
# deterministic, monotone function of the input that every endpoint shares.
PROMPT_BASE_TOKENS = 3
MESSAGE_OVERHEAD_TOKENS = 4
IMAGE_TOKENS = 256
VIDEO_TOKENS = 1024
FILE_TOKENS = 512
AUDIO_TOKENS = 128

ROLES = frozenset({"system", "user", "assistant", "tool"})
_PART_TYPES = frozenset({"text", "image_url", "video_url", "file_url", "input_audio"})
MARKER = "[[sim:"


def tokens(text: str) -> int:
    """Token count of one text: about one token per four UTF-8 bytes, rounded up."""
    n = len(text) if text.isascii() else len(text.encode())
    return (n + 3) // 4


def words(seed: bytes, count: int) -> str:
    """``count`` vocabulary words picked by the hash stream of ``seed``."""
    stream = hashlib.shake_256(seed).digest(count)
    return " ".join([_VOCAB[b & 63] for b in stream])


@dataclass(slots=True)
class Prompt:
    """What billing and markers need from a messages array."""

    tokens: int
    image_tokens: int
    video_tokens: int
    # Texts that contain a ``[[sim:`` marker; usually empty, so markers cost nothing.
    marked: list[str]
    last_role: str
    # sha256 of each file that came inline (a data: URI), so tests can prove it arrived intact.
    files: list[str] = field(default_factory=list)


def _bad(message: str) -> ValueError:
    return ValueError(message)


def _data_uri_sha256(url: str) -> str:
    """The sha256 of a data URI's decoded bytes; a malformed one is the client's error."""
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise _bad("image_url data URI must be data:<mime>;base64,<data>")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("image_url data URI is not valid base64") from None
    return hashlib.sha256(data).hexdigest()


def _content_tokens(content: Any, prompt: Prompt) -> int:
    """Tokens of one message's content; images and videos are added to ``prompt``."""
    if content is None:
        return 0
    if isinstance(content, str):
        if MARKER in content:
            prompt.marked.append(content)
        return tokens(content)
    if not isinstance(content, list):
        raise _bad("messages[].content must be a string or an array of content parts")
    total = 0
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _PART_TYPES:
            raise _bad("content part type must be text, image_url, video_url or file_url")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad("a text content part needs a string 'text'")
            if MARKER in text:
                prompt.marked.append(text)
            total += tokens(text)
        elif kind == "image_url":
            ref = part.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else None
            if isinstance(url, str) and url.startswith("data:"):
                prompt.files.append(_data_uri_sha256(url))
            prompt.image_tokens += IMAGE_TOKENS
            total += IMAGE_TOKENS
        elif kind == "video_url":
            prompt.video_tokens += VIDEO_TOKENS
            total += VIDEO_TOKENS
        elif kind == "file_url":
            total += FILE_TOKENS
        else:
            total += AUDIO_TOKENS
    return total


def read_messages(messages: Any, tools: Any = None) -> Prompt:
    """Validate a messages array and count its prompt tokens (tools count as prompt).

    Raises ValueError with a client-facing reason when the array is malformed.
    """
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty array")
    prompt = Prompt(PROMPT_BASE_TOKENS, 0, 0, [], "")
    asks = False
    for message in messages:
        if not isinstance(message, dict):
            raise _bad("each message must be an object")
        role = message.get("role")
        if role not in ROLES:
            raise _bad("message role must be system, user, assistant or tool")
        prompt.tokens += MESSAGE_OVERHEAD_TOKENS + _content_tokens(message.get("content"), prompt)
        calls = message.get("tool_calls")
        if calls:
            prompt.tokens += tokens(orjson.dumps(calls).decode())
        if role in ("user", "tool"):
            asks = True
        prompt.last_role = role
    if not asks:
        raise _bad("messages must include a user message, not only system/assistant")
    if tools:
        prompt.tokens += tokens(orjson.dumps(tools).decode())
    return prompt


@dataclass(slots=True)
class Completion:
    """One generated assistant turn and its billed size."""

    message: dict[str, Any]
    finish_reason: str
    completion_tokens: int
    reasoning_tokens: int


def _function_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        return []
    found = []
    for tool in tools:
        if isinstance(tool, dict) and tool.get("type") == "function":
            function = tool.get("function")
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                found.append(function)
    return found


def complete_chat(
    body: dict[str, Any],
    digest: bytes,
    last_role: str,
    *,
    sensitive: bool = False,
    answer_words: int | None = None,
) -> Completion:
    """The assistant turn for a chat body: text, JSON, a tool call, reasoning, truncation."""
    max_tokens = body.get("max_tokens")
    budget: int | None = max_tokens if isinstance(max_tokens, int) else None
    if sensitive:
        # Filtered mid-generation: the platform answers 200 with what little it produced.
        return Completion({"role": "assistant", "content": ""}, "sensitive", 0, 0)
    message: dict[str, Any] = {"role": "assistant"}
    used = 0
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        reasoning = "Let me think. " + words(digest + b"think", 16 + digest[1] % 24) + "."
        if budget is not None and tokens(reasoning) >= budget:
            message["reasoning_content"] = reasoning[: 4 * budget]
            message["content"] = ""
            return Completion(message, "length", budget, budget)
        message["reasoning_content"] = reasoning
        used = tokens(reasoning)
    reasoning_tokens = used
    remaining = None if budget is None else budget - used
    functions = _function_tools(body.get("tools"))
    if functions and last_role != "tool":
        rng = random.Random(digest)
        function = functions[digest[2] % len(functions)]
        params = function.get("parameters")
        arguments = orjson.dumps(sample_value(params, rng, root=params)).decode()
        cost = tokens(function["name"]) + tokens(arguments)
        if remaining is None or cost <= remaining:
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": "call_" + digest[:12].hex(),
                    "type": "function",
                    "index": 0,
                    "function": {"name": function["name"], "arguments": arguments},
                }
            ]
            return Completion(message, "tool_calls", used + cost, reasoning_tokens)
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind in ("json_object", "json_schema"):
        # json_schema (an OpenAI-compatible server): the schema rides in the request itself.
        given = fmt.get("json_schema") if kind == "json_schema" and isinstance(fmt, dict) else None
        schema = given.get("schema") if isinstance(given, dict) else None
        if not isinstance(schema, dict):
            schema = schema_in(body.get("messages"))
        if schema is not None:
            text = orjson.dumps(sample_value(schema, random.Random(digest), root=schema)).decode()
        else:
            text = orjson.dumps(
                {
                    "answer": words(digest, 6 + digest[0] % 10),
                    "score": digest[3] % 100,
                    "tags": words(digest + b"tags", 3).split(),
                }
            ).decode()
    else:
        sentence = words(digest, answer_words or 12 + digest[0] % 36)
        text = sentence[:1].upper() + sentence[1:] + "."
    finish = "stop"
    if remaining is not None and tokens(text) > remaining:
        text = text[: 4 * remaining]
        finish = "length"
    message["content"] = text
    return Completion(message, finish, used + tokens(text), reasoning_tokens)


def embedding(text: str, dimensions: int, seed: int) -> list[float]:
    """A unit-length vector that depends only on (text, dimensions, seed)."""
    raw = hashlib.shake_256(f"{seed}:{dimensions}:{text}".encode()).digest(2 * dimensions)
    values = struct.unpack(f"<{dimensions}h", raw)
    norm = math.sqrt(sum([v * v for v in values])) or 1.0
    scale = 1.0 / norm
    return [v * scale for v in values]


def _png(seed: bytes) -> bytes:
    """A real 16x16 single-colour PNG, so image tooling can open what was downloaded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    row = b"\x00" + seed[:3] * 16
    header = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * 16))
    filler = chunk(b"tEXt", b"Comment\x00" + hashlib.shake_256(seed).digest(2048).hex().encode())
    return b"\x89PNG\r\n\x1a\n" + body + filler + chunk(b"IEND", b"")


@lru_cache(maxsize=256)
def file_bytes(name: str) -> tuple[bytes, str]:
    """A few KB for a result file, with the magic bytes its extension promises."""
    seed = hashlib.sha256(name.encode()).digest()
    filler = hashlib.shake_256(seed).digest(4096)
    if name.endswith(".png"):
        return _png(seed), "image/png"
    if name.endswith(".pdf"):  # a slides export: the magic bytes and a trailer, no pages
        return b"%PDF-1.4\n%" + filler.hex().encode() + b"\n%%EOF\n", "application/pdf"
    if name.endswith(".jpg"):
        app0 = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
        return b"\xff\xd8" + app0 + filler.replace(b"\xff", b"\x00") + b"\xff\xd9", "image/jpeg"
    ftyp = struct.pack(">I", 24) + b"ftypisom" + struct.pack(">I", 512) + b"isommp42"
    mdat = struct.pack(">I", 8 + len(filler)) + b"mdat" + filler
    return ftyp + mdat, "video/mp4"


def search_results(query: str, count: int, digest: bytes) -> list[dict[str, str]]:
    """Fake but stable web search hits in the spec's WebSearchObjectResponse shape."""
    results = []
    for n in range(count):
        tag = hashlib.sha256(digest + n.to_bytes(2, "big")).hexdigest()[:10]
        site = f"{_VOCAB[digest[n % 32] & 63]}.example.com"
        results.append(
            {
                "title": f"{query[:60]} - result {n + 1}",
                "content": words(digest + tag.encode(), 24) + ".",
                "link": f"https://{site}/{tag}",
                "media": site,
                "icon": f"https://{site}/favicon.ico",
                "refer": f"ref_{n + 1}",
                "publish_date": f"2025-{1 + digest[n % 32] % 12:02d}-{1 + n % 28:02d}",
            }
        )
    return results
