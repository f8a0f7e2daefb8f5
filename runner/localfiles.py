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
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = [
    "FileRefError",
    "LocalFile",
    "check_chat_files",
    "data_uri",
    "has_chat_files",
    "inline_chat_files",
    "is_local",
    "resolve",
    "sniff_mime",
]

# Content parts whose url the platform only fetches: a local file cannot stand in for one.
_URL_ONLY_PARTS = ("video_url", "file_url")
_SNIFF_BYTES = 16


class FileRefError(ValueError):
    """A reference that names no readable file under the root; the message says why."""


@dataclass(frozen=True, slots=True)
class LocalFile:
    """A checked reference: the resolved path, its size and its type (from its content)."""

    path: Path
    size: int
    mime: str


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
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "audio/mpeg"
    if head[4:8] == b"ftyp":
        return "video/mp4"
    return None


def _path_of(value: str) -> str:
    if value.startswith("file:"):
        parts = urlsplit(value)
        if parts.netloc not in ("", "localhost"):
            raise FileRefError(f"file URI {value!r} names another host")
        return unquote(parts.path)
    return value


def resolve(value: str, root: Path) -> LocalFile:
    """Check one reference under `root` without reading its body; raise FileRefError."""
    raw = _path_of(value)
    if not raw:
        raise FileRefError("empty file path")
    base = root.resolve()
    given = Path(raw)
    candidate = given if given.is_absolute() else base / given
    # resolve() follows every symlink and folds "..", so one containment test covers all
    # three ways out; the check happens before anything is opened.
    try:
        real = candidate.resolve(strict=True)
    except FileNotFoundError:
        raise FileRefError(f"no such file {raw!r} under the files root") from None
    except (OSError, RuntimeError) as exc:
        raise FileRefError(f"cannot resolve {raw!r}: {exc.__class__.__name__}") from None
    if not real.is_relative_to(base):
        raise FileRefError(
            f"{raw!r} leads outside the files root: only files under it may be sent "
            "(set --files-root to widen it)"
        )
    try:
        with real.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(_SNIFF_BYTES)
    except IsADirectoryError:
        raise FileRefError(f"{raw!r} is a folder, not a file") from None
    except OSError as exc:
        raise FileRefError(f"cannot read {raw!r}: {exc.strerror or exc}") from None
    mime = sniff_mime(head)
    if mime is None:
        raise FileRefError(
            f"{raw!r} is not a known file type (png, jpeg, webp, gif, pdf, wav, mp3)"
        )
    return LocalFile(real, size, mime)


def data_uri(file: LocalFile) -> str:
    """The file as ``data:<mime>;base64,...``, read now (at send time)."""
    data = file.path.read_bytes()
    return f"data:{file.mime};base64," + base64.b64encode(data).decode("ascii")


def _url_parts(body: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(field path, part type, part's url object) for every url-bearing content part."""
    found: list[tuple[str, str, dict[str, Any]]] = []
    messages = body.get("messages")
    if type(messages) is not list:
        return found
    for i, msg in enumerate(messages):
        content = msg.get("content") if type(msg) is dict else None
        if type(content) is not list:
            continue
        for j, part in enumerate(content):
            if type(part) is not dict:
                continue
            ptype = part.get("type")
            if type(ptype) is not str:
                continue
            ref = part.get(ptype)
            if type(ref) is dict and type(ref.get("url")) is str:
                found.append((f"body.messages[{i}].content[{j}].{ptype}.url", ptype, ref))
    return found


def check_chat_files(body: dict[str, Any], root: Path) -> tuple[str, str] | None:
    """The first problem with a chat body's local references, as (field, message)."""
    for path, ptype, ref in _url_parts(body):
        url = ref["url"]
        if not is_local(url):
            continue
        if ptype in _URL_ONLY_PARTS:
            return path, f"{ptype} takes a public URL only: {url!r} looks like a local path"
        if ptype != "image_url":
            continue
        try:
            resolve(url, root)
        except FileRefError as exc:
            return path, str(exc)
    return None


def has_chat_files(body: dict[str, Any]) -> bool:
    return any(ptype == "image_url" and is_local(ref["url"]) for _, ptype, ref in _url_parts(body))


def inline_chat_files(body: dict[str, Any], root: Path) -> dict[str, Any]:
    """A copy of the body with each local image read into a data URI (the caller's body is
    left as it was, so the queued row keeps holding only its paths)."""
    if not has_chat_files(body):
        return body
    out = dict(body)
    messages = []
    for msg in body["messages"]:
        content = msg.get("content") if type(msg) is dict else None
        if type(content) is not list:
            messages.append(msg)
            continue
        parts = []
        for part in content:
            ref = part.get("image_url") if type(part) is dict else None
            if part.get("type") == "image_url" and type(ref) is dict and is_local(ref["url"]):
                file = resolve(ref["url"], root)
                part = {**part, "image_url": {**ref, "url": data_uri(file)}}
            parts.append(part)
        messages.append({**msg, "content": parts})
    out["messages"] = messages
    return out
