"""Real loopback servers for the transport conformance suite: a scripted origin and a proxy.

Both run on an asyncio loop in a background thread (`ServerThread`), so the same servers
serve in-process transports and a `runner` child process alike. The origin is scripted
byte by byte (`Reply`), because the point is to send what well-behaved frameworks never
do: 1xx before the answer, bodies that end at close, gzip, keep-alive connections closed
after one idle second. The proxy speaks absolute-form HTTP and CONNECT, and logs both.

Certificates come from trustme at test time (`tls_files`); no key is ever committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trustme

__all__ = [
    "Origin",
    "Proxy",
    "Reply",
    "Seen",
    "ServerThread",
    "TlsFiles",
    "reply",
    "tls_files",
]

T = TypeVar("T")


@dataclass
class Seen:
    """One request as the origin read it."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    conn: int
    at: float = field(default_factory=time.monotonic)


@dataclass
class Reply:
    """Raw bytes to write; then close the connection if `close`."""

    data: bytes
    close: bool = False


def reply(
    status: int = 200,
    body: bytes = b'{"ok": true}',
    *,
    headers: dict[str, str] | None = None,
    framing: str = "length",  # length | chunked | close
    encoding: str | None = None,  # gzip | deflate | raw-deflate
    interim: list[bytes] | None = None,
) -> Reply:
    """An HTTP/1.1 answer framed and encoded as asked."""
    if encoding == "gzip":
        body = gzip.compress(body)
    elif encoding == "deflate":
        body = zlib.compress(body)
    elif encoding == "raw-deflate":
        c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        body = c.compress(body) + c.flush()
    head = [f"HTTP/1.1 {status} X"]
    for k, v in (headers or {}).items():
        head.append(f"{k}: {v}")
    if encoding:
        head.append(f"Content-Encoding: {'deflate' if 'deflate' in encoding else encoding}")
    if framing == "length":
        head.append(f"Content-Length: {len(body)}")
        payload = body
    elif framing == "chunked":
        head.append("Transfer-Encoding: chunked")
        half = len(body) // 2
        parts = [p for p in (body[:half], body[half:]) if p]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    else:
        head.append("Connection: close")
        payload = body
    data = "\r\n".join(head).encode() + b"\r\n\r\n" + payload
    return Reply(b"".join(interim or []) + data, close=framing == "close")


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    return method, target, headers, body


class Origin:
    """A scripted HTTP/1.1 server: `handler(seen)` returns the Reply for each request."""

    def __init__(
        self,
        handler: Callable[[Seen], Reply],
        *,
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
        idle_close: float | None = None,
    ) -> None:
        self.handler = handler
        self.host = host
        self.tls = tls
        self.idle_close = idle_close
        self.seen: list[Seen] = []
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        try:
            while True:
                try:
                    if self.idle_close is not None:
                        async with asyncio.timeout(self.idle_close):
                            method, target, headers, body = await _read_request(reader)
                    else:
                        method, target, headers, body = await _read_request(reader)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                seen = Seen(method, target, headers, body, conn)
                self.seen.append(seen)
                answer = self.handler(seen)
                if answer.data:
                    writer.write(answer.data)
                    await writer.drain()
                if answer.close:
                    return
        except (ConnectionError, ssl.SSLError):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()


class Proxy:
    """A forward proxy: absolute-form requests for http://, CONNECT tunnels for https://."""

    def __init__(self, *, refuse: int | None = None) -> None:
        self.refuse = refuse
        self.connects: list[str] = []
        self.forwarded: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        pipe: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    method, target, headers, body = await _read_request(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if self.refuse is not None:
                    writer.write(b"HTTP/1.1 %d Refused\r\nContent-Length: 0\r\n\r\n" % self.refuse)
                    await writer.drain()
                    return
                if method == "CONNECT":
                    self.connects.append(target)
                    host, _, port = target.rpartition(":")
                    up_r, up_w = await asyncio.open_connection(host.strip("[]"), int(port))
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    await writer.drain()
                    await asyncio.gather(_copy(reader, up_w), _copy(up_r, writer))
                    return
                self.forwarded.append(f"{method} {target}")
                rest = target.split("://", 1)[1]
                authority, _, path = rest.partition("/")
                if upstream is None:
                    host, _, port = authority.rpartition(":")
                    up_r, upstream = await asyncio.open_connection(host.strip("[]"), int(port))
                    pipe = asyncio.ensure_future(_copy(up_r, writer))
                head = [f"{method} /{path} HTTP/1.1"]
                head += [f"{k}: {v}" for k, v in headers.items() if k != "proxy-authorization"]
                if body and "content-length" not in headers:
                    head.append(f"content-length: {len(body)}")
                headers_text = "\r\n".join(h for h in head if not h.startswith("transfer-encoding"))
                upstream.write(headers_text.encode("latin-1") + b"\r\n\r\n" + body)
                await upstream.drain()
        finally:
            if pipe is not None:
                pipe.cancel()
            for w in (upstream, writer):
                if w is not None:
                    with contextlib.suppress(Exception):
                        w.close()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class ServerThread:
    """An asyncio loop in a daemon thread; `run(coro)` executes on it from any thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._stops: list[Callable[[], Coroutine[Any, Any, None]]] = []

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def serve(self, server: Origin | Proxy) -> Any:
        self.run(server.start())
        self._stops.append(server.stop)
        return server

    def close(self) -> None:
        for stop in self._stops:
            with contextlib.suppress(Exception):
                self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


@dataclass
class TlsFiles:
    """A private CA and a server certificate for loopback, as PEM files in a temp folder."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    server: ssl.SSLContext = field(repr=False)


def tls_files(folder: Path) -> TlsFiles:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "::1", "localhost")
    paths = TlsFiles(folder / "ca.pem", folder / "server.pem", folder / "server.key",
                     ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))  # fmt: skip
    ca.cert_pem.write_to_path(str(paths.ca_file))
    cert.cert_chain_pems[0].write_to_path(str(paths.cert_file))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(paths.cert_file), append=True)
    cert.private_key_pem.write_to_path(str(paths.key_file))
    cert.configure_cert(paths.server)
    return paths


@contextlib.contextmanager
def server_thread() -> Iterator[ServerThread]:
    st = ServerThread()
    try:
        yield st
    finally:
        st.close()
