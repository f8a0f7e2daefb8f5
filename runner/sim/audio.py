"""Speech to text (``POST audio/transcriptions``): a form with a wav or mp3, as the platform
takes it (AudioTranscriptionRequest, API-NOTES 2.10).

The form becomes a JSON-able body before anything else looks at it: text fields as
strings, a repeated field (or ``name[]`` fields, as the official SDK names a list) as a
list, and the audio as its sha256, size, format and length, so the bytes are dropped at once and the
body hashes like any other request. The platform's caps hold: .wav or .mp3, at most
25 MB and 30 seconds; `file` wins over `file_base64` when both come. The answer has the
spec's shape (id, created, request_id, model, text) plus the `usage` the official SDK's
type for this call reads; ``stream`` answers with ``transcript.text.delta`` events.
"""

from __future__ import annotations

import hashlib
import io
import time
import wave
from typing import Any

import orjson

from runner.sim import content
from runner.sim.errors import ApiError
from runner.sim.files import MB, decode_inline
from runner.sim.forms import Part
from runner.sim.handlers import Answer, Call, Inspected, required_text, with_markers
from runner.sim.ledger import Bill
from runner.sim.state import SimState

__all__ = [
    "MAX_AUDIO_BYTES",
    "MAX_AUDIO_SECONDS",
    "answer_transcription",
    "form_request",
    "inspect_transcription",
]

MAX_AUDIO_BYTES = 25 * MB
MAX_AUDIO_SECONDS = 30.0
MAX_HOTWORDS = 100
# The platform's rate for audio input (API-NOTES 2.2: 1 s of audio = 12.5 tokens).
TOKENS_PER_SECOND = 12.5
# An mp3 without a parsed frame table is timed at 128 kbit/s.
_MP3_BYTES_PER_SECOND = 16_000


def _audio(data: bytes, field: str) -> dict[str, Any]:
    """What the platform needs of an audio file, checked against its caps."""
    if len(data) > MAX_AUDIO_BYTES:
        raise ApiError(1214, f"{field} is over the {MAX_AUDIO_BYTES // MB} MB limit")
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        try:
            with wave.open(io.BytesIO(data)) as w:
                seconds = w.getnframes() / w.getframerate()
        except (wave.Error, EOFError, ZeroDivisionError):
            raise ApiError(1214, f"{field} is not a readable WAV file") from None
        kind = "wav"
    elif data.startswith(b"ID3") or (len(data) > 1 and data[0] == 0xFF and data[1] >= 0xE0):
        seconds, kind = len(data) / _MP3_BYTES_PER_SECOND, "mp3"
    else:
        raise ApiError(1214, f"{field} must be a .wav or .mp3 audio file")
    if seconds > MAX_AUDIO_SECONDS:
        raise ApiError(
            1214, f"{field} plays {seconds:.1f} s, over the {MAX_AUDIO_SECONDS:g} s limit"
        )
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "format": kind,
        "seconds": round(seconds, 3),
    }


def form_request(parts: list[Part]) -> dict[str, Any]:
    """The form as a body: the audio checked and replaced by what it is (see above)."""
    body: dict[str, Any] = {}
    for part in parts:
        if part.filename is not None:
            body[part.name] = _audio(part.data, part.name)
            continue
        try:
            text = part.data.decode()
        except UnicodeDecodeError:
            raise ApiError(1214, f"the field '{part.name}' is not UTF-8 text") from None
        if part.name.endswith("[]"):
            body.setdefault(part.name[:-2], []).append(text)
        elif part.name in body:
            seen = body[part.name]
            body[part.name] = [*seen, text] if isinstance(seen, list) else [seen, text]
        else:
            body[part.name] = text
    return body


def _flag(value: Any, name: str) -> bool:
    if value in (None, False, "false"):
        return False
    if value in (True, "true"):
        return True
    raise ApiError(1214, f"The field '{name}' must be true or false")


def _hotwords(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):  # one word, or a JSON array in one field
        try:
            value = orjson.loads(value) if value.startswith("[") else [value]
        except orjson.JSONDecodeError:
            value = [value]
    if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
        raise ApiError(1214, "hotwords must be a list of strings")
    if len(value) > MAX_HOTWORDS:
        raise ApiError(1214, f"hotwords holds {len(value)} words, over the {MAX_HOTWORDS} limit")
    return value


def inspect_transcription(body: dict[str, Any]) -> Inspected:
    model = required_text(body, "model")
    file = body.get("file")
    if isinstance(file, str):
        raise ApiError(1214, "file must be uploaded as a multipart/form-data file part")
    if file is None:
        inline = body.get("file_base64")
        if inline is None:
            raise ApiError(1213, "The field 'file' is required (or give file_base64)")
        if not isinstance(inline, str) or not inline:
            raise ApiError(1214, "file_base64 must be a non-empty string")
        file = _audio(decode_inline(inline, "file_base64"), "file_base64")
    # Only what the audio is stays in the body: it hashes small and is never kept twice.
    body.pop("file_base64", None)
    body["file"] = file
    body["stream"] = _flag(body.get("stream"), "stream")
    body["hotwords"] = _hotwords(body.get("hotwords"))
    prompt = body.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ApiError(1214, "prompt must be a string")
    return Inspected(model, with_markers(prompt or ""), None, (file["sha256"],))


def answer_transcription(call: Call, state: SimState) -> Answer:
    body = call.body
    seconds = body["file"]["seconds"]
    # What was said depends on the audio (and the context prompt), not on how it is asked
    # for: streamed or not, the same clip gets the same transcript.
    heard = state.seed_bytes + bytes.fromhex(body["file"]["sha256"])
    text = content.words(heard + (body.get("prompt") or "").encode(), max(2, round(seconds * 2.5)))
    prompt_tokens = round(seconds * TOKENS_PER_SECOND) + content.tokens(body.get("prompt") or "")
    completion = content.tokens(text)
    bill = Bill(prompt_tokens=prompt_tokens, completion_tokens=completion)
    head = {"id": state.new_id(), "created": int(time.time()), "model": call.model}
    if body["stream"]:
        words = text.split(" ")
        events: list[dict[str, Any]] = [
            {
                **head,
                "type": "transcript.text.delta",
                "delta": w + (" " if i < len(words) - 1 else ""),
            }
            for i, w in enumerate(words)
        ]
        events.append({**head, "type": "transcript.text.done", "delta": ""})
        return Answer({"_sse": events}, bill)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }
    payload = {**head, "request_id": call.request_id, "text": text, "usage": usage}
    return Answer(payload, bill)
