"""The HTTP seam: one small client interface, two transports behind it.

Measured on a 2-core machine against a loopback server (C=500, L=0.2 s, 5,000 requests,
client pinned to one core): httpx.AsyncClient over a hand-written transport cost 246 µs of
CPU per request, the same transport called with httpx.Request/Response objects 126 µs,
a bare aiohttp loop 204 µs, and a keep-alive connection pool on asyncio protocols with the
httptools parser 40 µs. httpx's own pool sized to C is far worse (PEERS.md: 4 % of ideal).
The runner's budget is 150 µs per row *including* checkpoint and cost, so the default
transport is the protocol pool (`FastTransport`); `HttpxTransport` keeps httpx available
behind the same interface (`--transport httpx`) for proxies and odd servers, and artifact
downloads stream through httpx.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from dataclasses import dataclass
from typing import Protocol, cast
from urllib.parse import urlsplit

import httptools
import httpx

from .errors import ConnectionDropped, ResponseTimeout

__all__ = [
    "ConnectionDropped",
    "FastTransport",
    "HttpxTransport",
    "Response",
    "ResponseTimeout",
    "Transport",
    "make_transport",
]


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
    """Send one request to the base URL's host; raise ConnectionDropped on a broken link."""

    async def request(
        self, method: str, path: str, body: bytes | None = None, timeout: float | None = None
    ) -> Response: ...

    async def aclose(self) -> None: ...


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time (no pipelining)."""

    __slots__ = ("_body", "_headers", "closed", "fut", "parser", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.fut: asyncio.Future[Response] | None = None
        self.closed = False
        self.parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionDropped(f"malformed HTTP response: {exc}"))

    def eof_received(self) -> bool | None:
        self.closed = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionDropped("connection closed before the response was complete"))

    def _fail(self, exc: Exception) -> None:
        self.closed = True
        fut, self.fut = self.fut, None
        if fut is not None and not fut.done():
            fut.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._headers = []
        self._body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if not self.parser.should_keep_alive():
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        fut, self.fut = self.fut, None
        if fut is not None and not fut.done():
            fut.set_result(
                Response(self.parser.get_status_code(), self._headers, b"".join(self._body))
            )


def _expire(fut: asyncio.Future[Response], timeout: float) -> None:
    if not fut.done():
        fut.set_exception(ResponseTimeout(f"no answer within {timeout:g}s"))


class FastTransport:
    """A LIFO pool of keep-alive connections to one host, with no limit of its own.

    The pool deliberately has no size cap: the job's per-model limiters are the only
    limit, so there is no hidden second queue (STYLE.md: httpx's default pool of 100).
    """

    def __init__(self, base_url: str, headers: dict[str, str], *, connect_timeout: float = 10.0):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base URL must be http(s)://host[:port]/path, got {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if parts.scheme == "https" else None
        )
        self._prefix = parts.path.rstrip("/")
        self._connect_timeout = connect_timeout
        host_header = parts.netloc.rsplit("@", 1)[-1]
        fixed = {"Host": host_header, "User-Agent": "glm-batch-runner", **headers}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
        self._idle: collections.deque[_Connection] = collections.deque()
        self._all: set[_Connection] = set()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    _Connection,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except (OSError, TimeoutError) as exc:
            raise ConnectionDropped(f"cannot connect to {self._host}:{self._port}: {exc}") from exc
        self._all.add(conn)
        return conn

    async def request(
        self, method: str, path: str, body: bytes | None = None, timeout: float | None = None
    ) -> Response:
        """Send one request. The timeout is a timer on the response future rather than an
        anyio cancel scope: on the hot path a scope per request cost more CPU than the I/O."""
        conn: _Connection | None = None
        while self._idle:
            candidate = self._idle.pop()
            if not candidate.closed:
                conn = candidate
                break
            self._all.discard(candidate)
        if conn is None:
            conn = await self._connect()
        assert conn.transport is not None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Response] = loop.create_future()
        conn.fut = fut
        timer = None if timeout is None else loop.call_later(timeout, _expire, fut, timeout)
        target = self._prefix + path
        if body is None:
            head = f"{method} {target} HTTP/1.1\r\n".encode() + self._fixed + b"\r\n"
            conn.transport.write(head)
        else:
            head = (
                f"{method} {target} HTTP/1.1\r\n".encode()
                + self._fixed
                + b"Content-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
            )
            conn.transport.write(head + body)
        try:
            response = await fut
        except BaseException:
            if timer is not None:
                timer.cancel()
            # Cancelled (timeout) or broken: the connection's state is unknown, never reuse it.
            conn.closed = True
            conn.transport.close()
            self._all.discard(conn)
            raise
        if timer is not None:
            timer.cancel()
        if conn.closed:
            self._all.discard(conn)
        else:
            self._idle.append(conn)
        return response

    async def aclose(self) -> None:
        for conn in list(self._all):
            if conn.transport is not None:
                conn.transport.close()
        self._all.clear()
        self._idle.clear()


class HttpxTransport:
    """The same interface over httpx.AsyncClient, for proxies and odd servers."""

    def __init__(self, base_url: str, headers: dict[str, str], *, connect_timeout: float = 10.0):
        self._prefix = base_url.rstrip("/")
        self._client = httpx.AsyncClient(
            headers={**headers, "Content-Type": "application/json"},
            timeout=httpx.Timeout(None, connect=connect_timeout),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )

    async def request(
        self, method: str, path: str, body: bytes | None = None, timeout: float | None = None
    ) -> Response:
        try:
            r = await self._client.request(
                method, self._prefix + path, content=body, timeout=httpx.Timeout(timeout)
            )
        except httpx.TimeoutException as exc:
            raise ResponseTimeout(f"no answer within {timeout:g}s") from exc
        except httpx.TransportError as exc:
            raise ConnectionDropped(f"{type(exc).__name__}: {exc}") from exc
        return Response(r.status_code, list(r.headers.raw), r.content)

    async def aclose(self) -> None:
        await self._client.aclose()


def make_transport(
    kind: str, base_url: str, api_key: str, extra_headers: dict[str, str] | None = None
) -> Transport:
    """Build the transport for a job; the API key goes into one header and nowhere else."""
    headers = {"Authorization": f"Bearer {api_key}", **(extra_headers or {})}
    if kind == "fast":
        return FastTransport(base_url, headers)
    if kind == "httpx":
        return HttpxTransport(base_url, headers)
    raise ValueError(f"unknown transport {kind!r}: use 'fast' or 'httpx'")
