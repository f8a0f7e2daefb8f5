"""A lean stand-in for the platform's chat endpoint, for throughput benchmarks on loopback.

The runner's own simulator (``runner/sim``: uvicorn, an ASGI app, faults, tasks, batches,
a per-request-id ledger) costs about 180 µs of CPU per request on its core and, with 2,000
requests in flight, answers a mean 12.5 ms (p99 90 ms) later than its latency L: about half
of what a benchmark loses against the ideal was the test server's own queueing. This file
is the set-up PEERS.md describes instead: a small asyncio server answering every chat
request after exactly L seconds, with a per-(key, model) concurrency limit C (beyond it an
immediate HTTP 429 with Zhipu code 1302), that counts rows answered twice by fingerprinting
each answered request body.

Differences from the simulator, on purpose: no faults, no other endpoints (tasks, files,
batches, embeddings...), no per-request-id ledger, no token counting beyond a plausible
``usage``; the answer is the same short text for every prompt. ``GET /_sim/stats`` serves
the keys of the simulator's stats that ``bench/harness.py`` reads, including the ``bench``
window (first request received, last finished, statuses per second).

    python bench/standin.py --port 0 --latency 1.0 --concurrency 500 [--no-ledger-ids]

The first line on stdout is the base URL (``http://127.0.0.1:PORT/api/paas/v4``), as
``runner sim`` prints it. One process, one core: ``asyncio.Protocol`` callbacks (uvloop
when importable; ``--no-uvloop`` for the pure-stdlib loop), HTTP/1.1 parsed by hand, one
``loop.call_later`` per answered request rather than a task.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, cast

import orjson

HOST = "127.0.0.1"
API_PREFIX = "/api/paas/v4"
MAX_HEAD = 64 * 1024  # bytes of request line + headers before the request is refused
MAX_BODY = 16 * 1024 * 1024
REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
    429: b"Too Many Requests",
}
# Every prompt gets the same answer, as long as the simulator's to a 16-token request (the
# size of what the client parses, checkpoints and exports is part of what is measured).
ANSWER = "Request signal stone clear harbor signal plane reply harbor blue quick summary"
ANSWER_TOKENS = 16

Slot = tuple[bytes, str]  # (API key, model): the unit the platform's tier limits


def _error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


# Refusals repeat the same few bodies (a 1302 storm), so they are built once.
BUSY = _error_body("1302", "concurrency limit reached")
NO_KEY = _error_body("1001", "Authorization header with a Bearer token is required")
BAD_BODY = _error_body("1210", "the body must be a JSON object with a string 'model'")
BAD_HTTP = _error_body("400", "malformed HTTP request")
NOT_FOUND = _error_body("1222", "not found")
NOT_ALLOWED = _error_body("405", "method not allowed")


def response(status: int, body: bytes, keep_alive: bool) -> bytes:
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (
        status,
        REASONS.get(status, b"Error"),
        len(body),
    )
    return head + (b"\r\n" if keep_alive else b"connection: close\r\n\r\n") + body


class Stats:
    """What the server saw: the counters harness.run_tool reads from ``/_sim/stats``."""

    def __init__(self, *, ledger_ids: bool) -> None:
        self.ledger_ids = ledger_ids
        self.in_flight = 0
        # key -> the simulator's name for it (a hash prefix): the key itself is never served
        self.labels: dict[bytes, str] = {}
        self.reset()

    def reset(self) -> None:
        """Zero the counters (``POST /_sim/reset``); requests still in flight stay counted."""
        self.chat = 0
        self.statuses: dict[int, int] = {}
        self.peak_in_flight = self.in_flight
        self.peaks: dict[str, dict[str, int]] = {}
        self.billed = 0
        self.seen: set[bytes] = set()
        self.twice: set[bytes] = set()
        self.first_received: float | None = None
        self.last_finished: float | None = None
        self.by_second: dict[int, dict[int, int]] = {}

    def received(self) -> None:
        if self.first_received is None:
            self.first_received = time.time()
        self.chat += 1
        self.in_flight += 1
        if self.in_flight > self.peak_in_flight:
            self.peak_in_flight = self.in_flight

    def finished(self, status: int | None) -> None:
        """One chat request left; ``status`` is None when its client hung up first."""
        self.in_flight -= 1
        if status is None:
            return
        self.statuses[status] = self.statuses.get(status, 0) + 1
        now = self.last_finished = time.time()
        second = int(now - (self.first_received or now))
        bucket = self.by_second.get(second)
        if bucket is None:
            bucket = self.by_second[second] = {}
        bucket[status] = bucket.get(status, 0) + 1

    def concurrency(self, key: bytes, model: str, now: int) -> None:
        label = self.labels.get(key)
        if label is None:
            label = self.labels[key] = hashlib.sha256(key.strip()).hexdigest()[:12]
        peaks = self.peaks.setdefault(label, {})
        if now > peaks.get(model, 0):
            peaks[model] = now

    def answered(self, fingerprint: bytes | None) -> None:
        self.billed += 1
        if fingerprint is not None:
            if fingerprint in self.seen:
                self.twice.add(fingerprint)
            else:
                self.seen.add(fingerprint)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": {"chat/completions": self.chat},  # named as the simulator names it
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "peak_concurrency": {k: dict(v) for k, v in self.peaks.items()},
            "billed": {"requests": self.billed},
            "duplicates": {"fingerprint": sorted(fp.hex() for fp in self.twice)},
            "bench": {
                "first_received": self.first_received,
                "last_finished": self.last_finished,
                "by_second": {
                    str(s): {str(k): v for k, v in b.items()}
                    for s, b in sorted(self.by_second.items())
                },
            },
        }


class Standin:
    """The shared state of every connection: limits, in-flight slots and the stats."""

    def __init__(self, latency: float, concurrency: int, *, ledger_ids: bool) -> None:
        self.latency = latency
        self.concurrency = concurrency
        self.stats = Stats(ledger_ids=ledger_ids)
        self.loop = asyncio.get_running_loop()
        self.slots: dict[Slot, int] = {}
        self.answers = 0  # for unique completion ids

    def acquire(self, slot: Slot) -> bool:
        """Take one of the slot's C places, or refuse at once (the tier never queues)."""
        now = self.slots.get(slot, 0) + 1
        if now > self.concurrency:
            return False
        self.slots[slot] = now
        self.stats.concurrency(slot[0], slot[1], now)
        return True

    def release(self, slot: Slot) -> None:
        left = self.slots[slot] - 1
        if left:
            self.slots[slot] = left
        else:
            del self.slots[slot]  # one entry per live (key, model), not per one ever seen

    def completion(self, model: str, body_size: int) -> bytes:
        self.answers += 1
        prompt_tokens = max(1, body_size // 8)  # plausible, not counted
        return orjson.dumps(
            {
                "id": f"standin-{self.answers}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": ANSWER},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": ANSWER_TOKENS,
                    "total_tokens": prompt_tokens + ANSWER_TOKENS,
                },
            }
        )


class Request:
    """One parsed HTTP request; the header names are lower-case."""

    __slots__ = ("body", "headers", "keep_alive", "method", "path")

    def __init__(
        self, method: bytes, path: bytes, headers: dict[bytes, bytes], body: bytes, keep: bool
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.keep_alive = keep


class BadRequest(Exception):
    """The bytes are not an HTTP/1.1 request this server can frame; the connection ends."""


def parse(buf: bytes) -> tuple[Request | None, bytes]:
    """Split one whole request off the front of buf: (request, the rest), or (None, buf)
    until all of it has arrived.

    Plain bytes, not a bytearray: nearly every read holds exactly one whole request, and
    slicing it is then the only copy.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise BadRequest
        return None, buf
    lines = buf[:end].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise BadRequest
    method, target, version = parts
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise BadRequest
        headers[name.lower()] = value.strip()  # RFC 9112: no space before the colon
    if b"transfer-encoding" in headers:
        raise BadRequest  # no client measured here sends chunked bodies
    try:
        length = int(headers.get(b"content-length", b"0"))
    except ValueError:
        raise BadRequest from None
    if not 0 <= length <= MAX_BODY:
        raise BadRequest
    start = end + 4
    stop = start + length
    if len(buf) < stop:
        return None, buf
    conn = headers.get(b"connection", b"").lower()
    keep = conn != b"close" if version == b"HTTP/1.1" else conn == b"keep-alive"
    request = Request(method, target.partition(b"?")[0], headers, buf[start:stop], keep)
    return request, buf[stop:]


class Connection(asyncio.Protocol):
    """One client connection; requests are answered one at a time, in order.

    While a request waits out its latency the rest of the buffer is left unparsed, so
    pipelined requests are answered in order without a response queue.
    """

    def __init__(self, server: Standin) -> None:
        self.server = server
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.pending: asyncio.TimerHandle | None = None
        self.slot: Slot | None = None
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        if self.pending is None:
            self.serve()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.pending is not None:
            # The client gave up: free its place and write nothing.
            self.pending.cancel()
            self.pending = None
            self.end_pending(None)

    def serve(self) -> None:
        """Answer whole requests from the buffer until one must wait or the bytes run out."""
        while self.buf and self.pending is None and self.transport is not None:
            try:
                request, self.buf = parse(self.buf)
            except BadRequest:
                self.keep_alive = False
                self.send(400, BAD_HTTP)
                return
            if request is None:
                return
            self.keep_alive = request.keep_alive
            self.route(request)

    def route(self, request: Request) -> None:
        if request.path.endswith(b"/chat/completions"):
            self.server.stats.received()
            if request.method != b"POST":
                self.finish(405, NOT_ALLOWED)
            else:
                self.chat(request)
        elif request.path == b"/_sim/stats" and request.method == b"GET":
            self.send(200, orjson.dumps(self.server.stats.snapshot()))
        elif request.path == b"/_sim/reset" and request.method == b"POST":
            self.server.stats.reset()
            self.send(200, b"{}")
        else:
            self.send(404, NOT_FOUND)

    def chat(self, request: Request) -> None:
        auth = request.headers.get(b"authorization", b"")
        if not auth.startswith(b"Bearer ") or len(auth) <= 7:
            self.finish(401, NO_KEY)
            return
        try:
            body = orjson.loads(request.body)
            model = body["model"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            model = None
        if not isinstance(model, str):
            self.finish(400, BAD_BODY)
            return
        server = self.server
        slot = (auth[7:], model)
        if not server.acquire(slot):
            self.finish(429, BUSY)
            return
        self.slot = slot
        fingerprint = None
        if server.stats.ledger_ids:
            fingerprint = hashlib.blake2b(request.body, digest_size=16).digest()
        self.pending = server.loop.call_later(
            server.latency, self.answer, model, len(request.body), fingerprint
        )

    def answer(self, model: str, body_size: int, fingerprint: bytes | None) -> None:
        self.pending = None
        self.end_pending(200)
        self.server.stats.answered(fingerprint)
        self.send(200, self.server.completion(model, body_size))
        if self.transport is not None:
            self.serve()  # a pipelined request may be waiting in the buffer

    def end_pending(self, status: int | None) -> None:
        assert self.slot is not None
        self.server.release(self.slot)
        self.slot = None
        self.server.stats.finished(status)

    def finish(self, status: int, body: bytes) -> None:
        """Answer a chat request at once (a refusal) and count it."""
        self.server.stats.finished(status)
        self.send(status, body)

    def send(self, status: int, body: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        transport.write(response(status, body, self.keep_alive))
        if not self.keep_alive:
            transport.close()
            self.transport = None


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    state = Standin(args.latency, args.concurrency, ledger_ids=not args.no_ledger_ids)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await loop.create_server(
        lambda: Connection(state), HOST, args.port, backlog=4096, reuse_address=True
    )
    port = server.sockets[0].getsockname()[1]
    print(f"http://{HOST}:{port}{API_PREFIX}", flush=True)
    await stop.wait()
    server.close()  # open connections are dropped with the loop: nothing is left to answer


def loop_factory(no_uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop]:
    if not no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0, help="0 picks a free port.")
    p.add_argument("--latency", type=float, default=1.0, help="Seconds before each answer.")
    p.add_argument("--concurrency", type=int, default=500, help="Per (key, model) limit C.")
    p.add_argument(
        "--no-ledger-ids",
        action="store_true",
        help="Do not fingerprint bodies (no duplicate count; memory stays flat at 1M rows).",
    )
    p.add_argument("--no-uvloop", action="store_true", help="The standard library's loop.")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    with asyncio.Runner(loop_factory=loop_factory(args.no_uvloop)) as runner:
        runner.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
