"""`FastTransport`: keep-alive HTTP/1.1 connections on asyncio protocols, parsed by httptools.

The default transport (see the package's docstring for why): it owns its protocol code, so
the conformance suite (tests/test_transport_conformance.py) is what keeps it honest.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import time
import zlib
from typing import cast
from urllib.parse import urlsplit

import httptools

from ..errors import (
    AnswerTooLarge,
    ConnectionDropped,
    ResponseTimeout,
    TransportFatal,
    Unreachable,
    UsageError,
)
from .base import (
    ACCEPT_ENCODING,
    MAX_ANSWER_BYTES,
    STALE_WINDOW,
    Body,
    Multipart,
    Response,
    Target,
    redact_url,
)
from .config import HttpConfig, cert_problem

__all__ = ["FastTransport"]


def decoded(body: bytes, encoding: bytes | None, limit: int) -> bytes:
    """The body without its Content-Encoding, never more than `limit` bytes."""
    if not encoding or not body:
        return body
    coding = encoding.strip().lower()
    if coding in (b"gzip", b"x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif coding == b"deflate":
        # RFC 9110 means zlib-wrapped; some servers send raw deflate.
        wbits = zlib.MAX_WBITS if body[:1] == b"\x78" else -zlib.MAX_WBITS
    elif coding == b"identity":
        return body
    else:
        raise ConnectionDropped(f"unsupported Content-Encoding {coding.decode('latin-1')!r}")
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ConnectionDropped(f"corrupt {coding.decode()} body: {exc}") from exc
    if len(out) > limit:
        raise AnswerTooLarge(
            f"the answer is over the {limit}-byte cap once decompressed", code="answer_too_large"
        )
    return out


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time (no pipelining)."""

    __slots__ = (
        "_body",
        "_headers",
        "_size",
        "closed",
        "delimited",
        "fut",
        "got_bytes",
        "limit",
        "parser",
        "transport",
    )

    def __init__(self, limit: int = MAX_ANSWER_BYTES) -> None:
        self.transport: asyncio.Transport | None = None
        self.fut: asyncio.Future[Response] | None = None
        self.closed = False
        self.got_bytes = False
        # True once headers announced neither Content-Length nor chunked: the body ends at EOF.
        self.delimited = False
        self.limit = limit
        self.parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionDropped(f"malformed HTTP response: {exc}"))

    def eof_received(self) -> bool | None:
        self.closed = True
        self._end_of_body()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_of_body()
        self._fail(ConnectionDropped("connection closed before the response was complete"))

    def _end_of_body(self) -> None:
        """A close-delimited body is whole when the server closes (httptools has no EOF call)."""
        if self.delimited:
            self.delimited = False
            self.closed = True
            self._resolve()

    def _fail(self, exc: Exception) -> None:
        self.closed = True
        fut, self.fut = self.fut, None
        if fut is not None and not fut.done():
            fut.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def _resolve(self) -> None:
        fut, self.fut = self.fut, None
        if fut is not None and not fut.done():
            fut.set_result(
                Response(self.parser.get_status_code(), self._headers, b"".join(self._body))
            )

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._headers = []
        self._body = []
        self._size = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200 or status in (204, 304):
            return
        for k, v in self._headers:
            lk = k.lower()
            if lk == b"content-length" or (lk == b"transfer-encoding" and b"chunked" in v.lower()):
                return
        self.delimited = True

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.limit:
            self._fail(
                AnswerTooLarge(
                    f"the answer is over the {self.limit}-byte cap", code="answer_too_large"
                )
            )
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return  # informational (100 Continue, 103 Early Hints): the answer follows
        self.delimited = False
        if not self.parser.should_keep_alive():
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        self._resolve()


class _Tunnel(asyncio.Protocol):
    """Reads a proxy's answer to CONNECT; the connection then carries TLS to the origin."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n\r\n" in self.buf and not self.done.done():
            self.done.set_result(bytes(self.buf))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionDropped("the proxy closed the CONNECT tunnel"))


def _expire(fut: asyncio.Future[Response], timeout: float) -> None:
    if not fut.done():
        fut.set_exception(ResponseTimeout(f"no answer within {timeout:g}s"))


class FastTransport:
    """A LIFO pool of keep-alive connections to one host, with no limit of its own.

    The pool deliberately has no size cap: the job's per-model limiters are the only
    limit, so there is no hidden second queue (STYLE.md: httpx's default pool of 100).
    """

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        *,
        config: HttpConfig | None = None,
    ):
        config = config or HttpConfig()
        self._config = config
        t = self._t = Target.parse(base_url)
        self._ssl = config.ssl_context() if t.scheme == "https" else None
        self._where = t.netloc
        self._connect_timeout = config.connect_timeout
        self._limit = config.max_answer_bytes
        # A proxy: plain http is sent to it in absolute form; https goes through CONNECT.
        self._proxy: Target | None = None
        proxy = config.proxy_for(t.scheme, t.host, t.port)
        if proxy is not None:
            if "://" not in proxy:
                proxy = "http://" + proxy
            if urlsplit(proxy).scheme != "http":
                raise UsageError(
                    f"only http:// proxies are supported by --transport fast, got "
                    f"{redact_url(proxy)} (try --transport httpx)"
                )
            p = Target.parse(proxy)
            self._proxy = p
        self._absolute = self._proxy is not None and t.scheme == "http"
        fixed = {
            "Host": t.netloc,
            "User-Agent": "glm-batch-runner",
            "Accept-Encoding": ACCEPT_ENCODING,
            **headers,
        }
        if t.basic is not None:
            fixed["Authorization"] = t.basic
        if self._absolute and self._proxy is not None and self._proxy.basic is not None:
            fixed["Proxy-Authorization"] = self._proxy.basic
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
        self._idle: collections.deque[_Connection] = collections.deque()
        self._all: set[_Connection] = set()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        t, p = self._t, self._proxy
        host, port = (p.host, p.port) if p is not None else (t.host, t.port)
        limit = self._limit
        try:
            async with asyncio.timeout(self._connect_timeout):
                if p is not None and self._ssl is not None:
                    conn = await self._tunnel(loop, p)
                else:
                    _, conn = await loop.create_connection(
                        lambda: _Connection(limit),
                        host,
                        port,
                        ssl=self._ssl,
                        server_hostname=t.host if self._ssl else None,
                    )
        except TransportFatal:
            raise
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            fatal = cert_problem(exc, self._where)
            if fatal is not None:
                raise fatal from None
            text = f"cannot connect to {host}:{port}: {exc}"
            if isinstance(exc, ConnectionRefusedError):
                raise Unreachable(text, "refused") from exc
            if isinstance(exc, socket.gaierror):
                raise Unreachable(text, "unknown host") from exc
            raise ConnectionDropped(text) from exc
        self._all.add(conn)
        return conn

    async def _tunnel(self, loop: asyncio.AbstractEventLoop, p: Target) -> _Connection:
        """CONNECT through the proxy, then TLS to the origin over that tunnel."""
        t = self._t
        raw, tun = await loop.create_connection(_Tunnel, p.host, p.port)
        auth = f"Proxy-Authorization: {p.basic}\r\n" if p.basic else ""
        raw.write(f"CONNECT {t.netloc} HTTP/1.1\r\nHost: {t.netloc}\r\n{auth}\r\n".encode())
        try:
            head = await tun.done
        except BaseException:
            raw.close()
            raise
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if code != 200:
            raw.close()
            msg = f"the proxy {p.netloc} refused CONNECT {t.netloc}: {status_line!r}"
            if code in (403, 407):
                raise TransportFatal(msg + "; check the proxy's address and credentials")
            raise ConnectionDropped(msg)
        conn = _Connection(self._limit)
        assert self._ssl is not None
        tls = await loop.start_tls(raw, conn, self._ssl, server_hostname=t.host)
        if tls is None:  # pragma: no cover - only when the loop closes meanwhile
            raise ConnectionDropped("the TLS tunnel closed during the handshake")
        conn.connection_made(tls)
        return conn

    async def request(
        self, method: str, path: str, body: Body | None = None, timeout: float | None = None
    ) -> Response:
        """Send one request. The timeout is a timer on the response future rather than an
        anyio cancel scope: on the hot path a scope per request cost more CPU than the I/O."""
        target = self._t.url(path) if self._absolute else self._t.path(path)
        if body is None:
            head = f"{method} {target} HTTP/1.1\r\n".encode() + self._fixed + b"\r\n"
            data = head
        else:
            kind = b"application/json"
            if isinstance(body, Multipart):
                # Encoded here, so the file's bytes live only as long as this request.
                boundary = body.boundary()
                kind = body.content_type(boundary).encode("ascii")
                body = b"".join(body.encode(boundary))
            data = (
                f"{method} {target} HTTP/1.1\r\n".encode()
                + self._fixed
                + b"Content-Type: "
                + kind
                + b"\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            conn: _Connection | None = None
            while self._idle:
                candidate = self._idle.pop()
                if not candidate.closed:
                    conn = candidate
                    break
                self._all.discard(candidate)
            reused = conn is not None
            if conn is None:
                conn = await self._connect()
            written = time.monotonic()
            try:
                response = await self._exchange(conn, data, deadline)
            except ConnectionDropped as exc:
                stale = (
                    reused
                    and not conn.got_bytes
                    and not isinstance(exc, ResponseTimeout)
                    and time.monotonic() - written < STALE_WINDOW
                )
                if stale:
                    continue  # the server closed it while idle: nothing was answered
                raise
            break
        encoding = response.header(b"content-encoding")
        if encoding is not None:
            response.body = decoded(response.body, encoding, self._limit)
        return response

    async def _exchange(self, conn: _Connection, data: bytes, deadline: float | None) -> Response:
        assert conn.transport is not None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Response] = loop.create_future()
        conn.fut = fut
        conn.got_bytes = False
        timer = None
        if deadline is not None:
            left = max(0.0, deadline - time.monotonic())
            timer = loop.call_at(loop.time() + left, _expire, fut, left)
        conn.transport.write(data)
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
