"""Per endpoint kind: where it is sent, and how its answer becomes a result, usage and errors.

Everything here is pure (bytes in, values out) so it is cheap on the hot path and easy to
test. The HTTP call itself is the pool's (`Lanes.call` in pool.py), over http/.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from .agents import fold_sse
from .cost import Usage
from .errors import (
    FatalAPIError,
    RateLimited,
    RetryableError,
    RowError,
    TransportFatal,
    Verdict,
    classify,
)
from .http import Response

__all__ = [
    "ENDPOINT_NOT_FOUND",
    "Parsed",
    "error_fields",
    "error_shape_of",
    "parse_retry_after",
    "parse_success",
    "raise_for_answer",
    "usage_of",
]

# finish_reason values that arrive with HTTP 200 but mean the row did not get an answer.
_ROW_FAIL_FINISH = {
    "sensitive": (
        "1301",
        "the platform's content filter stopped the output (finish_reason 'sensitive')",
    ),
    "model_context_window_exceeded": (
        "1261",
        "the prompt plus output exceeded the model's context window",
    ),
}


@dataclass(slots=True)
class Parsed:
    """A 200 answer: the body to keep, what it billed, and whether the row still failed."""

    body: dict[str, Any]
    text: str
    usage: Usage
    failure: RowError | None = None
    # False when the answer does not say what it billed (a transcription without `usage`):
    # its cost is then unknown, counted as a row with no price, never as free.
    priced: bool = True


def parse_retry_after(resp: Response) -> float | None:
    raw = resp.header(b"retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None  # an HTTP date: rare for APIs; fall back to our own backoff


def error_fields(body: Any) -> tuple[str | None, str]:
    if not isinstance(body, dict):
        return None, ""
    err = body.get("error", body)
    if not isinstance(err, dict):
        return None, str(err)
    code = err.get("code")
    msg = str(err.get("message") or err.get("msg") or "")
    # llama.cpp and OpenAI name the kind of error in `type` (exceed_context_size_error,
    # invalid_request_error): it is often the only part that says what to change.
    kind = err.get("type")
    if isinstance(kind, str) and kind and kind not in msg:
        msg = f"{msg} [{kind}]" if msg else kind
    return (None if code is None else str(code)), msg


def error_shape_of(body: Any, declared: str | None) -> str:
    """The code table for an error body: the provider's, else guessed from the body.

    Only SiliconFlow sends a flat body with a `data` key ({"code":20012,"message":..,
    "data":null}); Zhipu's flat form has no `data`. The guess covers callers that do not
    pass the provider's shape.
    """
    if declared:
        return declared
    if isinstance(body, dict) and "error" not in body and "data" in body and "code" in body:
        return "siliconflow"
    return "zhipu"


ENDPOINT_NOT_FOUND = "endpoint_not_found"
_MODEL_WORDS = re.compile(r"(?i)\bmodel")
_UNSUPPORTED = re.compile(r"(?i)not supported|unsupported|not implemented")


def raise_for_answer(
    resp: Response,
    *,
    balance_statuses: frozenset[int] = frozenset(),
    error_shape: str | None = None,
) -> dict[str, Any]:
    """Return the decoded body of a success; raise the right error for anything else.

    A 200 whose body carries an `error` object is an error too (Zhipu sends 1305 that way
    mid-stream, API-NOTES 3.7). `error_shape` is the provider's (`Provider.error_shape`).
    """
    body: Any
    try:
        body = orjson.loads(resp.body) if resp.body else {}
    except orjson.JSONDecodeError:
        body = None
    if resp.status == 200 and isinstance(body, dict) and "error" not in body:
        return body
    if resp.status == 200 and body is None:
        folded = fold_sse(resp.body)
        if folded is not None:
            # A streamed answer (the slides agent streams unless told not to), read whole:
            # from here on it is the JSON answer a non-streamed call would have given.
            resp.body = folded
            return raise_for_answer(
                resp, balance_statuses=balance_statuses, error_shape=error_shape
            )
        raise RetryableError(
            "the server answered 200 with a body that is not JSON", status=200, code=None
        )
    if 300 <= resp.status < 400:
        # Following would resend a billable POST to an address nobody chose; a moved API
        # moves for every row, so the job stops with where it went.
        where = (resp.header(b"location") or b"no Location").decode("latin-1")
        raise TransportFatal(
            f"the server redirected the request (HTTP {resp.status}) to {where}; API calls "
            "are not redirected: set --base-url to the new address",
            status=resp.status,
        )
    code, message = error_fields(body)
    if not message:
        message = resp.body[:300].decode("utf-8", "replace").strip() or f"HTTP {resp.status}"
    verdict = classify(
        resp.status,
        code,
        balance_statuses=balance_statuses,
        shape=error_shape_of(body, error_shape),
    )
    text = f"{message} (HTTP {resp.status}" + (f", code {code})" if code else ")")
    if verdict is Verdict.STOP_JOB:
        raise FatalAPIError(text, code=code, status=resp.status)
    if resp.status == 404 and not _MODEL_WORDS.search(f"{code} {message}"):
        # Not an unknown model (a row's mistake): the path itself is not there, for every
        # row alike (pool.py counts it towards stopping the job, health.py).
        raise RowError(
            f"{message} (HTTP 404): no such endpoint at this base URL",
            code=ENDPOINT_NOT_FOUND,
            status=404,
        )
    if verdict is Verdict.RETRY and resp.status >= 500 and _UNSUPPORTED.search(message):
        # "image input is not supported": the request itself, so asking again is no use.
        raise RowError(text, code=code or str(resp.status), status=resp.status)
    if verdict is Verdict.RATE_LIMIT:
        raise RateLimited(text, code=code, status=resp.status, retry_after=parse_retry_after(resp))
    if verdict is Verdict.FAIL_ROW:
        raise RowError(message, code=code or str(resp.status), status=resp.status)
    raise RetryableError(text, code=code, status=resp.status, retry_after=parse_retry_after(resp))


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def usage_of(endpoint: str, body: dict[str, Any]) -> Usage:
    """What the answer billed, from its own `usage` (and item counts for media)."""
    u = body.get("usage")
    prompt = completion = cached = total = 0
    if isinstance(u, dict):
        prompt = _int(u.get("prompt_tokens"))
        completion = _int(u.get("completion_tokens"))
        total = _int(u.get("total_tokens")) or prompt + completion
        details = u.get("prompt_tokens_details")
        if isinstance(details, dict):
            cached = _int(details.get("cached_tokens"))
    images = videos = uses = 0
    if endpoint == "images/generations":
        data = body.get("data")
        images = len(data) if isinstance(data, list) else 0
    elif endpoint == "web_search":
        uses = 1
    if endpoint == "tokenizer":
        # Counting tokens is not billed as inference.
        prompt = completion = cached = 0
    return Usage(prompt, completion, cached, total, images, videos, uses)


# What `keep_response="answer"` keeps of an answer (Settings.keep_response).
KEEP_RESPONSE = ("full", "answer")
_ANSWER = ("role", "content", "tool_calls")


def answer_only(body: dict[str, Any]) -> str | None:
    """A chat completion's ids and choices (the message's role, content and tool calls,
    and why it ended), without the rest: usage is in columns of its own, and the reasoning
    of a thinking model is often most of the answer's bytes. None: not a chat completion's
    shape, kept whole."""
    choices = body.get("choices")
    if not isinstance(choices, list):
        return None
    kept = []
    for i, choice in enumerate(choices):
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            return None
        message = {k: choice["message"][k] for k in _ANSWER if k in choice["message"]}
        kept.append(
            {
                "index": choice.get("index", i),
                "finish_reason": choice.get("finish_reason"),
                "message": message,
            }
        )
    # The ids are what the platform's support asks for.
    ids = {k: body[k] for k in ("id", "request_id") if k in body}
    return orjson.dumps({**ids, "choices": kept}).decode()


def parse_success(endpoint: str, raw: bytes, body: dict[str, Any], keep: str = "full") -> Parsed:
    """`keep`: "answer" stores a chat completion's ids and choices alone (`answer_only`)."""
    usage = usage_of(endpoint, body)
    failure: RowError | None = None
    text = (keep == "answer" and endpoint == "chat/completions" and answer_only(body)) or (
        raw.decode("utf-8", "replace")
    )
    if endpoint == "audio/transcriptions":
        # AudioTranscriptionResponse: the transcript is `text`. The spec gives the answer no
        # `usage`, though the official SDK's type for it has one: read it when it is there.
        if type(body.get("text")) is not str:
            failure = RowError("the answer carries no transcript (no `text`)", code="no_text")
        return Parsed(body, text, usage, failure, priced=isinstance(body.get("usage"), dict))
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        reason = choices[0].get("finish_reason")
        if isinstance(reason, str) and reason in _ROW_FAIL_FINISH:
            code, msg = _ROW_FAIL_FINISH[reason]
            failure = RowError(msg, code=code, status=200)
    return Parsed(body=body, text=text, usage=usage, failure=failure)
