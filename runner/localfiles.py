"""A row's local file references: where they may point, what they are, how they are sent.

Where the platform takes a URL or base64, a value with no scheme (``img/a.png``) or a
``file:`` URI names a local file under one files root (the spec's folder unless the job
says otherwise). The check runs when the row is read and touches only metadata (a stat and
the first bytes for the type); the bytes are read when the request is built, so a row
waiting in a stream holds a path, never its file.

A reference that escapes the root (an absolute path elsewhere, a ``..`` that climbs out, a
symlink that leads out) is refused without being opened: a spec from someone else must not
be able to upload the user's home folder.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

__all__ = [
    "AUDIO",
    "AudioTooLong",
    "FileRefError",
    "FileTooLarge",
    "Kind",
    "LocalFile",
    "check_file",
    "check_files",
    "check_inline_audio",
    "data_uri",
    "forget",
    "has_files",
    "inline_files",
    "inline_size",
    "is_local",
    "locate",
    "remember",
    "resolve",
    "sniff_mime",
    "wav_seconds",
]

# Content parts whose url the platform only fetches: a local file cannot stand in for one.
_URL_ONLY_PARTS = ("video_url", "file_url")
_SNIFF_BYTES = 16


# Bytes handed over in Python (`generate` image columns), by sha256: a row names them as
# ``blob:sha256:<hex>`` so neither its spec line nor the checkpoint ever holds them.
_BLOBS: dict[str, tuple[bytes, str]] = {}
_BLOB = "blob:sha256:"


def remember(data: bytes) -> str:
    """A reference to `data` that this process can inline at send time; raises
    FileRefError when its first bytes are no known type."""
    mime = sniff_mime(data[:_SNIFF_BYTES])
    if mime is None:
        raise FileRefError("the bytes are not a known file type (png, jpeg, webp, gif, pdf)")
    digest = hashlib.sha256(data).hexdigest()
    _BLOBS[digest] = (data, mime)
    return _BLOB + digest


def forget(refs: Any) -> None:
    for ref in refs:
        _BLOBS.pop(ref.removeprefix(_BLOB), None)


def _blob(value: str) -> tuple[bytes, str]:
    try:
        return _BLOBS[value.removeprefix(_BLOB)]
    except KeyError:
        raise FileRefError(
            f"{value[:24]}...: these bytes were given in Python to another process; call "
            "generate again with the same input to send them"
        ) from None


class FileRefError(ValueError):
    """A reference that names no readable file under the root; the message says why."""

    # The row's error code when the file breaks one of its field's caps (None: any other
    # problem, which the caller names: an invalid row, or a file gone unreadable).
    cap_code: str | None = None


@dataclass(frozen=True, slots=True)
class LocalFile:
    """A checked reference: the resolved path, its size and its type (from its content)."""

    path: Path
    size: int
    mime: str
    # How long it plays, where its header says (WAV); None otherwise.
    seconds: float | None = None


def is_local(value: str) -> bool:
    """True for a ``file:`` URI or a value with no scheme (a relative or absolute path)."""
    if value.startswith("file:"):
        return True
    scheme = urlsplit(value).scheme
    # "C:/x" style drive letters parse as a one-letter scheme; a path all the same.
    return not scheme or len(scheme) == 1


def sniff_mime(head: bytes) -> str | None:
    """The type a file's first bytes declare, or None when none of the known kinds."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head.startswith(b"ID3") or _mpeg_frame(head):
        return "audio/mpeg"
    if head[4:8] == b"ftyp":
        return "video/mp4"
    return None


def _mpeg_frame(head: bytes) -> bool:
    """An MPEG audio frame header (an mp3 without an ID3 tag): 11 sync bits, then a version,
    layer, bitrate and sample rate that are not the reserved values. Checking those, not the
    sync alone, keeps arbitrary bytes that start with 0xFF 0xE0 from passing for audio."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version, layer = (head[1] >> 3) & 3, (head[1] >> 1) & 3
    bitrate, rate = head[2] >> 4, (head[2] >> 2) & 3
    return version != 1 and layer != 0 and bitrate != 15 and rate != 3


def wav_seconds(fh: Any) -> float | None:
    """A WAV file's duration from its chunk headers (seeking past the data, never reading
    it), or None when the header does not say. Any codec: data size over byte rate."""
    fh.seek(12)
    byte_rate = data = None
    while byte_rate is None or data is None:
        header = fh.read(8)
        if len(header) < 8:
            return None
        kind, size = header[:4], struct.unpack("<I", header[4:])[0]
        if kind == b"fmt ":
            fmt = fh.read(16)
            if len(fmt) < 16:
                return None
            byte_rate = struct.unpack("<I", fmt[8:12])[0]
            fh.seek(size - 16 + (size & 1), os.SEEK_CUR)
        else:
            if kind == b"data":
                data = size
            fh.seek(size + (size & 1), os.SEEK_CUR)
    return data / byte_rate if byte_rate else None


def _path_of(value: str) -> str:
    if value.startswith("file:"):
        parts = urlsplit(value)
        if parts.netloc not in ("", "localhost"):
            raise FileRefError(f"file URI {value!r} names another host")
        return unquote(parts.path)
    return value


def locate(value: str, root: Path) -> tuple[str, Path]:
    """The path a reference names under `root`, resolved, before anything is opened: the one
    containment rule for every local file a row names (agent glossaries included).
    Returns the path as written and the real path; raises FileRefError."""
    raw = _path_of(value)
    if not raw:
        raise FileRefError("empty file path")
    base = root.resolve()
    given = Path(raw)
    candidate = given if given.is_absolute() else base / given
    # resolve() follows every symlink and folds "..", so one containment test covers all
    # three ways out; the check happens before anything is opened.
    try:
        real = candidate.resolve()
    except (OSError, RuntimeError) as exc:
        raise FileRefError(f"cannot resolve {raw!r}: {exc.__class__.__name__}") from None
    if not real.is_relative_to(base):
        if ".." in given.parts:
            how = "the path climbs out of it"
        elif given.is_absolute():
            how = "an absolute path elsewhere"
        else:
            how = "a symlink leads out of it"
        raise FileRefError(
            f"{raw!r} leads outside the files root ({how}): only files under it may be sent "
            "(set --files-root to widen it)"
        )
    if not real.exists():
        raise FileRefError(f"no such file {raw!r} under the files root")
    return raw, real


def resolve(value: str, root: Path) -> LocalFile:
    """Check one reference under `root` without reading its body; raise FileRefError."""
    raw, real = locate(value, root)
    seconds = None
    try:
        with real.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(_SNIFF_BYTES)
            mime = sniff_mime(head)
            if mime == "audio/wav":
                seconds = wav_seconds(fh)
    except IsADirectoryError:
        raise FileRefError(f"{raw!r} is a folder, not a file") from None
    except OSError as exc:
        raise FileRefError(f"cannot read {raw!r}: {exc.strerror or exc}") from None
    if mime is None:
        raise FileRefError(
            f"{raw!r} is not a known file type (png, jpeg, webp, gif, pdf, wav, mp3)"
        )
    return LocalFile(real, size, mime, seconds)


def data_uri(file: LocalFile) -> str:
    """The file as ``data:<mime>;base64,...``, read now (at send time)."""
    data = file.path.read_bytes()
    return f"data:{file.mime};base64," + base64.b64encode(data).decode("ascii")


@dataclass(frozen=True, slots=True)
class Kind:
    """What one field accepts from a local file: its types and its size caps (API-NOTES)."""

    name: str
    mimes: frozenset[str]
    caps: dict[str, int]  # mime -> most bytes; "*" for any other accepted mime
    seconds: float | None = None  # the longest audio accepted, where the file says


_MB = 1024 * 1024
_IMAGES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
CHAT_IMAGE = Kind("a chat image", _IMAGES, {})
OCR_FILE = Kind(
    "an OCR file",
    frozenset({"image/png", "image/jpeg", "application/pdf"}),
    {"application/pdf": 50 * _MB, "*": 10 * _MB},
)
VIDEO_IMAGE = Kind(
    "an image-to-video image",
    frozenset({"image/png", "image/jpeg", "image/webp"}),
    {"*": 50 * _MB},
)
# AudioTranscriptionRequest.file: .wav or .mp3, at most 25 MB and 30 seconds.
AUDIO = Kind(
    "an audio file to transcribe", frozenset({"audio/wav", "audio/mpeg"}), {"*": 25 * _MB}, 30.0
)
URL_ONLY = Kind("url only", frozenset(), {})


class FileTooLarge(FileRefError):
    """A file over its field's cap: its own error code, and no request is sent."""

    cap_code = "file_too_large"


class AudioTooLong(FileRefError):
    """Audio that plays longer than its field accepts: its own code, and no request."""

    cap_code = "audio_too_long"


# A place in a body that holds a reference: (field path, container, key, kind).
_Slot = tuple[str, Any, Any, Kind]


def _chat_slots(body: dict[str, Any]) -> list[_Slot]:
    found: list[_Slot] = []
    messages = body.get("messages")
    if type(messages) is not list:
        return found
    for i, msg in enumerate(messages):
        content = msg.get("content") if type(msg) is dict else None
        if type(content) is not list:
            continue
        for j, part in enumerate(content):
            ptype = part.get("type") if type(part) is dict else None
            if type(ptype) is not str:
                continue
            ref = part.get(ptype)
            if type(ref) is dict and type(ref.get("url")) is str:
                kind = CHAT_IMAGE if ptype == "image_url" else URL_ONLY
                if ptype == "image_url" or ptype in _URL_ONLY_PARTS:
                    found.append((f"body.messages[{i}].content[{j}].{ptype}.url", ref, "url", kind))
    return found


def _slots(endpoint: str, body: dict[str, Any]) -> list[_Slot]:
    """Every string in the body that may name a local file, with what it accepts."""
    if endpoint in ("chat/completions", "async/chat/completions"):
        return _chat_slots(body)
    if endpoint == "layout_parsing" and type(body.get("file")) is str:
        return [("body.file", body, "file", OCR_FILE)]
    if endpoint == "audio/transcriptions" and type(body.get("file")) is str:
        return [("body.file", body, "file", AUDIO)]
    if endpoint == "videos/generations":
        image = body.get("image_url")
        if type(image) is str:
            return [("body.image_url", body, "image_url", VIDEO_IMAGE)]
        if type(image) is list:
            return [
                (f"body.image_url[{k}]", image, k, VIDEO_IMAGE)
                for k, item in enumerate(image)
                if type(item) is str
            ]
    return []


def _is_inline(value: str) -> bool:
    """Already a data URI or a bare base64 payload (the platform takes both where it takes
    base64): long, no slash-free path shape. Paths are short; payloads are not."""
    return value.startswith("data:") or (len(value) > 1024 and "." not in value[-8:])


def _local(value: str) -> bool:
    return (is_local(value) and not _is_inline(value)) or value.startswith(_BLOB)


def check_file(value: str, kind: Kind, root: Path) -> LocalFile:
    """Resolve one reference and hold it to its field's types and caps."""
    file = resolve(value, root)
    if file.mime not in kind.mimes:
        allowed = ", ".join(sorted(m.split("/")[1] for m in kind.mimes))
        raise FileRefError(f"{value!r} is {file.mime}; {kind.name} must be one of {allowed}")
    _hold_to_caps(value, kind, file.mime, file.size, file.seconds)
    return file


def _hold_to_caps(
    what: str, kind: Kind, mime: str, size: int, seconds: float | None = None
) -> None:
    cap = kind.caps.get(mime, kind.caps.get("*"))
    if cap is not None and size > cap:
        raise FileTooLarge(
            f"{what!r} is {size / _MB:.1f} MB, over the {cap // _MB} MB cap "
            f"for {kind.name} ({mime})"
        )
    if kind.seconds is not None and seconds is not None and seconds > kind.seconds:
        raise AudioTooLong(
            f"{what!r} plays {seconds:.1f} s, over the {kind.seconds:g} s cap for {kind.name}"
        )


def check_inline_audio(value: str) -> None:
    """Hold a `file_base64` payload to the audio caps without decoding all of it: the type
    from its first bytes, the size from its length. Raise FileRefError."""
    payload = value.partition(",")[2] if value.startswith("data:") else value
    try:
        head = base64.b64decode("".join(payload[:128].split())[:24], validate=True)
    except (binascii.Error, ValueError):
        raise FileRefError("file_base64 is not valid base64") from None
    # Line breaks (MIME-style base64) carry no bytes; a count is one pass in C.
    chars = len(payload) - payload.count("\n") - payload.count("\r")
    size = chars * 3 // 4 - payload.rstrip()[-2:].count("=")
    mime = sniff_mime(head)
    if mime not in AUDIO.mimes:
        raise FileRefError(f"file_base64 holds {mime or 'an unknown type'}; audio must be wav, mp3")
    assert mime is not None
    _hold_to_caps("file_base64", AUDIO, mime, size)


def check_files(
    endpoint: str, body: dict[str, Any], root: Path
) -> tuple[str, str, str | None] | None:
    """The first problem with a body's local references, if any."""
    for path, holder, key, kind in _slots(endpoint, body):
        value = holder[key]
        if not _local(value):
            continue
        if kind is URL_ONLY:
            name = path.rsplit(".", 2)[-2]
            return path, f"{name} takes a public URL only: {value!r} looks like a local path", None
        try:
            if value.startswith(_BLOB):
                data, mime = _blob(value)
                if mime not in kind.mimes:
                    raise FileRefError(f"the bytes are {mime}, which {kind.name} cannot be")
                _hold_to_caps(path, kind, mime, len(data))
            else:
                check_file(value, kind, root)
        except FileRefError as exc:
            return path, str(exc), exc.cap_code
    inline = body.get("file_base64") if endpoint == "audio/transcriptions" else None
    if type(inline) is str and "file" not in body:  # the platform prefers file when both
        try:
            check_inline_audio(inline)
        except FileRefError as exc:
            return "body.file_base64", str(exc), exc.cap_code
    return None


def has_files(endpoint: str, body: dict[str, Any]) -> bool:
    return any(
        kind is not URL_ONLY and _local(holder[key])
        for _, holder, key, kind in _slots(endpoint, body)
    )


def inline_size(endpoint: str, body: dict[str, Any], root: Path) -> int:
    """About the bytes a body's local files add once inlined as base64 (a stat each, no
    read): what a request borrows from the body budget before it reads them."""
    total = 0
    for _, holder, key, kind in _slots(endpoint, body):
        value = holder[key]
        if kind is URL_ONLY or not _local(value):
            continue
        try:
            if value.startswith(_BLOB):
                size = len(_blob(value)[0])
            else:
                size = locate(value, root)[1].stat().st_size
        except (FileRefError, OSError):
            continue  # inline_files says why when it reads it
        total += 4 * -(-size // 3) + 64
    return total


def inline_files(endpoint: str, body: dict[str, Any], root: Path) -> dict[str, Any]:
    """A copy of the body with each local file read into a data URI; the caller's body is
    left as it was, so the queued row keeps holding only its paths. The file is checked
    again here: it may have changed since the row was read."""
    wire: dict[str, Any] = orjson.loads(orjson.dumps(body))
    for _, holder, key, kind in _slots(endpoint, wire):
        value = holder[key]
        if kind is URL_ONLY or not _local(value):
            continue
        if value.startswith(_BLOB):
            data, mime = _blob(value)
            _hold_to_caps("bytes", kind, mime, len(data))
            holder[key] = f"data:{mime};base64," + base64.b64encode(data).decode("ascii")
        else:
            holder[key] = data_uri(check_file(value, kind, root))
    return wire
