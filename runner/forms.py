"""A row sent as multipart/form-data (audio transcriptions): its body as form fields.

The row is JSON like every other; only its wire form differs. `file` names a local file
(localfiles.py: the same root, containment and caps as every other reference), checked
again here and sent as a file part whose bytes the transport reads while it sends.
Other values become text fields as OpenAPI's defaults for a form lay them out (the
spec declares this request as one): a string as itself, a boolean as ``true``/``false``,
a number in its JSON spelling, a list of those as the same field repeated, an object (or
a list holding one) as one JSON field; a null is left out. (The official SDK writes a
list as ``name[]`` fields but refuses more than one item, so its layout is no guide.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from .http.base import FilePart, Multipart
from .localfiles import AUDIO, check_file

__all__ = ["AUDIO_TOKENS_PER_SECOND", "form_body", "form_fields", "form_tokens"]

# What the platform counts for a second of audio (API-NOTES, input_audio).
AUDIO_TOKENS_PER_SECOND = 12.5
_EXTENSIONS = {"audio/wav": ".wav", "audio/mpeg": ".mp3"}
_SCALARS = (str, bool, int, float)


def form_fields(name: str, value: Any) -> Iterator[tuple[str, str]]:
    """The text fields one body value becomes."""
    if value is None:
        return
    if type(value) is list and all(type(v) in _SCALARS for v in value):
        for item in value:
            yield from form_fields(name, item)
    elif type(value) is str:
        yield name, value
    elif type(value) is bool:
        yield name, "true" if value else "false"
    else:  # numbers in their JSON spelling; objects as JSON
        yield name, orjson.dumps(value).decode()


def form_body(body: dict[str, Any], root: Path) -> Multipart:
    """The body as a form; raises FileRefError when its file no longer passes its checks."""
    fields = tuple(
        field for key, value in body.items() if key != "file" for field in form_fields(key, value)
    )
    size = sum(len(k) + len(v) + 64 for k, v in fields)
    ref = body.get("file")
    if type(ref) is not str:
        return Multipart(fields, (), size)
    file = check_file(ref, AUDIO, root)
    # The name the platform sees carries the file's real type, whatever the path says.
    name, ext = Path(ref).name, _EXTENSIONS[file.mime]
    filename = name if name.lower().endswith(ext) else Path(name).stem + ext
    part = FilePart("file", file.path, filename, file.mime)
    return Multipart(fields, (part,), size + file.size + 128 + len(filename))


def form_tokens(form: Multipart) -> int:
    """Input tokens a form may count: its text at a token per three bytes, its audio at the
    platform's rate for the longest clip it accepts (the form does not say how long)."""
    text = sum(len(value) for _, value in form.fields) // 3
    return text + int(AUDIO_TOKENS_PER_SECOND * (AUDIO.seconds or 0)) * len(form.files)
