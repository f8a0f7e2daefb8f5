"""Files the simulated platform receives inline: base64 decoded, typed, capped and hashed.

A field that takes "URL or base64" gets a public URL (left alone: nothing arrived), a
``data:<mime>;base64,`` URI or a bare base64 payload. Bad base64 or a file over the
field's cap is refused with the platform's parameter error, as the spec's caps say; a good
one is counted by its sha256 so tests can prove the runner's bytes arrived intact.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from runner.sim.errors import ApiError

__all__ = ["MB", "decode_inline", "inline_file_sha256"]

MB = 1024 * 1024


def decode_inline(value: str, field: str) -> bytes:
    """The bytes of a ``data:<mime>;base64,`` URI or a bare base64 payload; ApiError 1214."""
    payload = value
    if value.startswith("data:"):
        head, sep, payload = value.partition(",")
        if not sep or not head.endswith(";base64"):
            raise ApiError(1214, f"{field} data URI must be data:<mime>;base64,<data>")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(1214, f"{field} is neither a URL nor valid base64") from None


def inline_file_sha256(value: str, field: str, cap: int, pdf_cap: int | None = None) -> str | None:
    """The sha256 of an inline file, None for a URL; ApiError 1214 for bad base64 or a
    file over `cap` (`pdf_cap` for a PDF where the field caps PDFs apart)."""
    if value.startswith(("http://", "https://")):
        return None
    data = decode_inline(value, field)
    limit = pdf_cap if pdf_cap is not None and data.startswith(b"%PDF-") else cap
    if len(data) > limit:
        raise ApiError(1214, f"{field} is over the {limit // MB} MB limit")
    return hashlib.sha256(data).hexdigest()
