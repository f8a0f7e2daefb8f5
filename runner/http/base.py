"""What every transport shares: the answer, the interface, and a base URL taken apart."""

from __future__ import annotations

import base64
import posixpath
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from ..errors import RowError, UsageError

__all__ = [
    "ACCEPT_ENCODING",
    "MAX_ANSWER_BYTES",
    "STALE_WINDOW",
    "Body",
    "FilePart",
    "Multipart",
    "Response",
    "Target",
    "Transport",
    "redact_url",
]

# The largest API answer read into memory. A chat answer is kilobytes; a runaway or hostile
# server must not take the process's memory with it. Files stream to disk under their own cap.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
# A reused keep-alive connection that ends within this many seconds of a write, before a
# single byte of answer, was closed by the server while idle (its FIN crossed our request):
# the request is sent again on a fresh connection, once, without spending a retry.
STALE_WINDOW = 1.0
ACCEPT_ENCODING = "gzip, deflate"


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


@dataclass(frozen=True, slots=True)
class FilePart:
    """A form field whose value is a local file, read each time the request is sent (never
    before: a row waiting out a backoff holds its path, not its bytes)."""

    name: str
    path: Path
    filename: str
    content_type: str

    def read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as exc:
            # Checked when the row was read and again when its body was built: it went
            # away or changed since, which no retry of this row can mend.
            raise RowError(
                f"local file {self.filename!r} cannot be read: {exc.strerror or exc}",
                code="file_unreadable",
            ) from None


def _quoted(value: str) -> bytes:
    # Form-data names are quoted strings with no escape character: the HTML standard (and
    # every browser) percent-encodes the three bytes that would end or break the header.
    text = value.replace("\r", "%0D").replace("\n", "%0A").replace('"', "%22")
    return b'"' + text.encode() + b'"'


@dataclass(frozen=True, slots=True)
class Multipart:
    """A multipart/form-data body (RFC 7578): text fields in order, then files.

    `size` is about what it weighs on the wire (the files as last checked), for callers
    that budget bytes before sending; the exact length is known only once it is encoded.
    """

    fields: tuple[tuple[str, str], ...]
    files: tuple[FilePart, ...] = ()
    size: int = 0

    @staticmethod
    def boundary() -> str:
        # 128 random bits: the chance that a file holds the delimiter line is nil, so no
        # scan of the bytes is needed (RFC 2046 asks only that it not occur).
        return "runner-" + secrets.token_hex(16)

    def content_type(self, boundary: str) -> str:
        return f"multipart/form-data; boundary={boundary}"

    def encode(self, boundary: str) -> list[bytes]:
        """The body's pieces, files read now; their concatenation is the body."""
        dash = b"--" + boundary.encode("ascii")
        out: list[bytes] = []
        for name, value in self.fields:
            out.append(
                dash + b"\r\nContent-Disposition: form-data; name=" + _quoted(name) + b"\r\n\r\n"
            )
            out.append(value.encode() + b"\r\n")
        for part in self.files:
            out.append(
                dash
                + b"\r\nContent-Disposition: form-data; name="
                + _quoted(part.name)
                + b"; filename="
                + _quoted(part.filename)
                + b"\r\nContent-Type: "
                + part.content_type.encode("ascii")
                + b"\r\n\r\n"
            )
            out.append(part.read())
            out.append(b"\r\n")
        out.append(dash + b"--\r\n")
        return out


# What a request may carry: JSON bytes, or a form whose files are read as it is sent.
Body = bytes | Multipart


class Transport(Protocol):
    """Send one request to the base URL's host; raise ConnectionDropped on a broken link.

    Redirects are never followed (an API POST must not silently change address); the
    caller sees the 3xx answer. Bodies arrive decoded (gzip, deflate) and capped. A bytes
    body is sent as JSON; a `Multipart` body as multipart/form-data, its files read only
    while the request is built (a file that can no longer be read is the row's RowError).
    """

    async def request(
        self, method: str, path: str, body: Body | None = None, timeout: float | None = None
    ) -> Response: ...

    async def aclose(self) -> None: ...


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{netloc}{parts.path}"


@dataclass(frozen=True, slots=True)
class Target:
    """A base URL taken apart once: where to connect and how to name each request."""

    scheme: str
    host: str
    port: int
    netloc: str  # host[:port] as the Host header wants it (IPv6 in brackets), no userinfo
    prefix: str
    query: str
    basic: str | None  # an Authorization value from user:pass@, if the URL carries one

    @classmethod
    def parse(cls, base_url: str) -> Target:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(
                f"base URL must be http(s)://host[:port]/path, got {redact_url(base_url)!r}"
            )
        basic = None
        if parts.username is not None or parts.password is not None:
            pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            basic = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        return cls(
            parts.scheme,
            parts.hostname,
            parts.port or (443 if parts.scheme == "https" else 80),
            parts.netloc.rsplit("@", 1)[-1],
            parts.path.rstrip("/"),
            parts.query,
            basic,
        )

    def path(self, path: str) -> str:
        """The origin-form target: the base path, then `path`, then both queries.

        A `path` that climbs (`/../../v1/agents`) is resolved against the base path: the
        agents API lives beside the model API on the same host (agents.py).
        """
        if path.startswith("/../"):
            path = posixpath.normpath(self.prefix + path)
            return path if not self.query else path + "?" + self.query
        if not self.query:
            return self.prefix + path
        sep = "&" if "?" in path else "?"
        return self.prefix + path + sep + self.query

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.netloc}{self.path(path)}"
