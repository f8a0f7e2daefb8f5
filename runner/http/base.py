"""What every transport shares: the answer, the interface, and a base URL taken apart."""

from __future__ import annotations

import base64
import posixpath
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote, urlsplit

from ..errors import UsageError

__all__ = [
    "ACCEPT_ENCODING",
    "MAX_ANSWER_BYTES",
    "STALE_WINDOW",
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


class Transport(Protocol):
    """Send one request to the base URL's host; raise ConnectionDropped on a broken link.

    Redirects are never followed (an API POST must not silently change address); the
    caller sees the 3xx answer. Bodies arrive decoded (gzip, deflate) and capped.
    """

    async def request(
        self, method: str, path: str, body: bytes | None = None, timeout: float | None = None
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
