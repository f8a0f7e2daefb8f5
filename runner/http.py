"""The HTTP seam: one small client interface, two transports behind it, one configuration.

Measured on one harness (docs/BENCHMARKS.md, "HTTP transports": C=500, L=0.2 s, client
on one core, CPU per request): the protocol pool below (`FastTransport`: keep-alive
connections on asyncio protocols with the httptools parser) 63 µs, pyreqwest 102, aiohttp
201, curl_cffi 353, httpx over aiohttp 594, niquests 934, httpx's own pool 1,640. The
runner's budget is 150 µs per row *including* checkpoint and cost, so `FastTransport` is
the default, kept only because it passes the same conformance suite as httpx
(tests/test_transport_conformance.py): proxies from the environment (CONNECT for https),
TLS with a private CA, gzip/deflate, chunked and close-delimited bodies, 1xx answers,
redirects refused, stale keep-alive connections, IPv6 literals, credentials and a query in
the base URL, and a size cap. `HttpxTransport` keeps httpx behind the same interface
(`--transport httpx`).

`HttpConfig` is what every connection of a job shares (CA bundle, proxies, timeouts, caps):
API calls, batch file transfers and artifact downloads are all built from it
(`make_transport`, `make_client`), so one job never behaves two ways.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import functools
import os
import ssl
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast
from urllib.parse import unquote, urlsplit

import httptools

if TYPE_CHECKING:  # imported where used: httpx (with its CLI's imports) is slow to load
    import httpx

from .errors import AnswerTooLarge, ConnectionDropped, ResponseTimeout, TransportFatal, UsageError

__all__ = [
    "MAX_ANSWER_BYTES",
    "ConnectionDropped",
    "FastTransport",
    "HttpConfig",
    "HttpxTransport",
    "Response",
    "ResponseTimeout",
    "Transport",
    "make_client",
    "make_transport",
    "transport_error",
]

# The largest API answer read into memory. A chat answer is kilobytes; a runaway or hostile
# server must not take the process's memory with it. Files stream to disk under their own cap.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
# A reused keep-alive connection that ends within this many seconds of a write, before a
# single byte of answer, was closed by the server while idle (its FIN crossed our request):
# the request is sent again on a fresh connection, once, without spending a retry.
STALE_WINDOW = 1.0
ACCEPT_ENCODING = "gzip, deflate"


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """Connection settings every client of one job shares.

    `ca_bundle` replaces the system's trusted CAs (as curl's --cacert does); without it the
    system store is used, which honours SSL_CERT_FILE / SSL_CERT_DIR. Proxies come from
    HTTP_PROXY / HTTPS_PROXY / ALL_PROXY / NO_PROXY (and their lower-case forms) when
    `trust_env`, as httpx reads them.
    """

    ca_bundle: Path | None = None
    connect_timeout: float = 10.0
    max_answer_bytes: int = MAX_ANSWER_BYTES
    trust_env: bool = True

    def ssl_context(self) -> ssl.SSLContext:
        env = os.environ
        ca = str(self.ca_bundle) if self.ca_bundle else None
        return _ssl_context(ca, env.get("SSL_CERT_FILE"), env.get("SSL_CERT_DIR"))

    def proxy_for(self, scheme: str, host: str, port: int) -> str | None:
        """The proxy URL for a target, or None (no proxy set, or NO_PROXY matches)."""
        if not self.trust_env:
            return None
        import urllib.request  # here: it loads http.client and email, which nothing else needs

        proxies = urllib.request.getproxies_environment()
        proxy = proxies.get(scheme) or proxies.get("all")
        if not proxy:
            return None
        # Not in typeshed, but public and documented beside getproxies_environment.
        bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
        if bypass(host, proxies) or bypass(f"{host}:{port}", proxies):
            return None
        return proxy


@functools.lru_cache(maxsize=8)
def _ssl_context(
    ca_bundle: str | None, cert_file: str | None, cert_dir: str | None
) -> ssl.SSLContext:
    """One verifying context per CA bundle (and SSL_CERT_* value): one costs milliseconds."""
    try:
        ctx = ssl.create_default_context(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise TransportFatal(f"cannot load the CA bundle {ca_bundle}: {exc}") from exc
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _cert_problem(exc: BaseException, where: str) -> TransportFatal | None:
    """A TransportFatal naming the certificate problem, if `exc` (or its cause) is one."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            why = seen.verify_message or seen.reason or str(seen)
            return TransportFatal(
                f"the TLS certificate of {where} is not trusted ({why}); if it is signed by a "
                "private CA, pass that CA with --ca-bundle FILE (or SSL_CERT_FILE)"
            )
        seen = seen.__cause__ or seen.__context__
    return None


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{netloc}{parts.path}"


@dataclass(frozen=True, slots=True)
class _Target:
    """A base URL taken apart once: where to connect and how to name each request."""

    scheme: str
    host: str
    port: int
    netloc: str  # host[:port] as the Host header wants it (IPv6 in brackets), no userinfo
    prefix: str
    query: str
    basic: str | None  # an Authorization value from user:pass@, if the URL carries one

    @classmethod
    def parse(cls, base_url: str) -> _Target:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(
                f"base URL must be http(s)://host[:port]/path, got {_redact_url(base_url)!r}"
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
        """The origin-form target: the base path, then `path`, then both queries."""
        if not self.query:
            return self.prefix + path
        sep = "&" if "?" in path else "?"
        return self.prefix + path + sep + self.query

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.netloc}{self.path(path)}"


def _decoded(body: bytes, encoding: bytes | None, limit: int) -> bytes:
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
        connect_timeout: float | None = None,
        config: HttpConfig | None = None,
    ):
        config = config or HttpConfig()
        self._config = config
        t = self._t = _Target.parse(base_url)
        self._ssl = config.ssl_context() if t.scheme == "https" else None
        self._where = t.netloc
        self._connect_timeout = (
            connect_timeout if connect_timeout is not None else config.connect_timeout
        )
        self._limit = config.max_answer_bytes
        # A proxy: plain http is sent to it in absolute form; https goes through CONNECT.
        self._proxy: _Target | None = None
        proxy = config.proxy_for(t.scheme, t.host, t.port)
        if proxy is not None:
            if "://" not in proxy:
                proxy = "http://" + proxy
            if urlsplit(proxy).scheme != "http":
                raise UsageError(
                    f"only http:// proxies are supported by --transport fast, got "
                    f"{_redact_url(proxy)} (try --transport httpx)"
                )
            p = _Target.parse(proxy)
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
            fatal = _cert_problem(exc, self._where)
            if fatal is not None:
                raise fatal from None
            raise ConnectionDropped(f"cannot connect to {host}:{port}: {exc}") from exc
        self._all.add(conn)
        return conn

    async def _tunnel(self, loop: asyncio.AbstractEventLoop, p: _Target) -> _Connection:
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
        self, method: str, path: str, body: bytes | None = None, timeout: float | None = None
    ) -> Response:
        """Send one request. The timeout is a timer on the response future rather than an
        anyio cancel scope: on the hot path a scope per request cost more CPU than the I/O."""
        target = self._t.url(path) if self._absolute else self._t.path(path)
        if body is None:
            head = f"{method} {target} HTTP/1.1\r\n".encode() + self._fixed + b"\r\n"
            data = head
        else:
            data = (
                f"{method} {target} HTTP/1.1\r\n".encode()
                + self._fixed
                + b"Content-Type: application/json\r\nContent-Length: "
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
            response.body = _decoded(response.body, encoding, self._limit)
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


def make_client(
    config: HttpConfig,
    *,
    base_url: str = "",
    headers: dict[str, str] | None = None,
    timeout: float | None = None,
    follow_redirects: bool = False,
    max_connections: int | None = None,
) -> httpx.AsyncClient:
    """An httpx client with the job's trust, proxies and timeouts (batch files, artifacts)."""
    import httpx

    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        verify=config.ssl_context(),
        trust_env=config.trust_env,
        timeout=httpx.Timeout(timeout, connect=config.connect_timeout),
        follow_redirects=follow_redirects,
        # httpcore's pool slows down sharply with its size (PEERS.md: 38 req/s of 1,000 at
        # C=500 with 500 kept); 64 kept connections measured best here.
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=64),
    )


def transport_error(exc: httpx.TransportError, where: str) -> Exception:
    """An httpx failure as our own: a certificate problem stops the job, the rest drop."""
    import httpx

    fatal = _cert_problem(exc, where)
    if fatal is not None:
        return fatal
    if isinstance(exc, httpx.TimeoutException):
        return ResponseTimeout(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, httpx.ProxyError):
        text = str(exc)
        if "407" in text or "403" in text:
            return TransportFatal(f"the proxy refused the tunnel to {where}: {text}")
    return ConnectionDropped(f"{type(exc).__name__}: {exc}")


class HttpxTransport:
    """The same interface over httpx.AsyncClient."""

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        *,
        connect_timeout: float | None = None,
        config: HttpConfig | None = None,
    ):
        config = config or HttpConfig()
        if connect_timeout is not None:
            config = HttpConfig(
                config.ca_bundle, connect_timeout, config.max_answer_bytes, config.trust_env
            )
        t = self._t = _Target.parse(base_url)
        self._limit = config.max_answer_bytes
        fixed = {**headers, "Content-Type": "application/json"}
        if t.basic is not None:
            fixed["Authorization"] = t.basic
        self._client = make_client(config, headers=fixed)

    async def request(
        self, method: str, path: str, body: bytes | None = None, timeout: float | None = None
    ) -> Response:
        import httpx

        for attempt in (1, 2):
            started = time.monotonic()
            try:
                return await self._once(method, path, body, timeout)
            except httpx.RemoteProtocolError as exc:
                # httpcore cannot say whether the connection was reused, so the stale case
                # is recognized as FastTransport's is: no answer at all, at once.
                stale = "without sending a response" in str(exc)
                if attempt == 1 and stale and time.monotonic() - started < STALE_WINDOW:
                    continue
                raise transport_error(exc, self._t.netloc) from None
            except httpx.TransportError as exc:
                raise transport_error(exc, self._t.netloc) from None
            except httpx.DecodingError as exc:
                raise ConnectionDropped(f"corrupt body: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(
        self, method: str, path: str, body: bytes | None, timeout: float | None
    ) -> Response:
        import httpx

        limit = self._limit
        async with self._client.stream(
            method, self._t.url(path), content=body, timeout=httpx.Timeout(timeout)
        ) as r:
            chunks: list[bytes] = []
            size = 0
            async for chunk in r.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise AnswerTooLarge(
                        f"the answer is over the {limit}-byte cap", code="answer_too_large"
                    )
                chunks.append(chunk)
        return Response(r.status_code, list(r.headers.raw), b"".join(chunks))

    async def aclose(self) -> None:
        await self._client.aclose()


def make_transport(
    kind: str,
    base_url: str,
    api_key: str,
    extra_headers: dict[str, str] | None = None,
    *,
    config: HttpConfig | None = None,
) -> Transport:
    """Build the transport for a job; the API key goes into one header and nowhere else."""
    headers = {"Authorization": f"Bearer {api_key}", **(extra_headers or {})}
    if kind == "fast":
        return FastTransport(base_url, headers, config=config)
    if kind == "httpx":
        return HttpxTransport(base_url, headers, config=config)
    raise ValueError(f"unknown transport {kind!r}: use 'fast' or 'httpx'")
