"""The simulator as a raw ASGI application: routing, admission and the control plane.

No web framework: a request is a path lookup, one orjson parse and one orjson dump, so a
single core serves thousands of requests per second. API paths are accepted under
``/api/paas/v4/`` (the real base URL) and the short ``/paas/v4/``, ``/v4/`` and ``/v1/``
forms that batch files and OpenAI-style clients use. ``/_sim/*`` is the control plane:
stats, runtime config, reset and the signed result files.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from runner.sim import agents as a
from runner.sim import audio as au
from runner.sim import batches as b
from runner.sim import handlers as h
from runner.sim import tools_api as t
from runner.sim.content import file_bytes
from runner.sim.errors import ApiError, render_error
from runner.sim.faults import NO_MARKERS, read_markers
from runner.sim.forms import read_form
from runner.sim.handlers import Call, Endpoint, poll
from runner.sim.ledger import Bill
from runner.sim.state import SimState
from runner.sim.tasks import UrlExpired

__all__ = ["SimApp", "SimulatedDrop", "quiet_drops"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_PREFIXES = ("/api/paas/v4/", "/api/v1/", "/paas/v4/", "/v4/", "/v1/")
_SSE = b"text/event-stream"
_POLL = "async-result/"
_MAX_BODY = 32 * 1024 * 1024
# A form carries its audio (25 MB) as bytes, or as base64 in file_base64 (a third more).
_MAX_FORM = 40 * 1024 * 1024
_JSON = b"application/json"
# The status a queued request ends with when its client left (nginx's "client closed").
_CLIENT_GONE = 499
_FAULT_CODES = {"429": (1305, 429), "500": (500, 500), "503": (1305, 503)}


# Endpoint name (the path after the API prefix) -> handler pair and whether it bills.
ENDPOINTS: dict[str, Endpoint] = {
    e.name: e
    for e in (
        Endpoint("chat/completions", h.inspect_chat, h.answer_chat, True),
        Endpoint("async/chat/completions", h.inspect_chat, h.answer_async_chat, True),
        Endpoint("embeddings", h.inspect_embeddings, h.answer_embeddings, True),
        Endpoint("images/generations", h.inspect_image, h.answer_image, True),
        Endpoint("async/images/generations", h.inspect_image, h.answer_async_image, True),
        Endpoint("videos/generations", h.inspect_video, h.answer_video, True),
        Endpoint("tokenizer", t.inspect_tokenizer, t.answer_tokenizer, False),
        Endpoint("web_search", t.inspect_web_search, t.answer_web_search, True),
        Endpoint("layout_parsing", t.inspect_layout, t.answer_layout, True),
        Endpoint("reader", t.inspect_reader, t.answer_reader, True),
        Endpoint("agents", a.inspect_agent, a.answer_agent, True),
        Endpoint(
            "audio/transcriptions",
            au.inspect_transcription,
            au.answer_transcription,
            True,
            form=au.form_request,
        ),
        Endpoint(
            "agents/async-result",
            a.inspect_agent_result,
            a.answer_agent_result,
            False,
            tracked=False,
        ),
        Endpoint(
            "agents/conversation",
            a.inspect_conversation,
            a.answer_conversation,
            False,
            tracked=False,
        ),
    )
}


class SimulatedDrop(Exception):
    """Raised mid-response so that uvicorn closes the connection before the body ends."""


class _DropFilter(logging.Filter):
    """Keeps deliberate drops out of uvicorn's error log; real app errors still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], SimulatedDrop))


def quiet_drops() -> None:
    """Install the drop filter on uvicorn's error logger (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropFilter) for f in logger.filters):
        logger.addFilter(_DropFilter())


def _api_name(path: str) -> str | None:
    for prefix in _PREFIXES:
        if path.startswith(prefix):
            name = path[len(prefix) :].rstrip("/")
            # The official SDK posts '/v1/agents' under the model API's base URL.
            return name[3:] if name.startswith("v1/agents") else name
    return None


def _content_type(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return str(value.decode("latin-1"))
    return ""


def _auth_and_host(scope: Scope) -> tuple[str, str | None]:
    key = ""
    host = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            text = value.decode("latin-1").strip()
            scheme, _, token = text.partition(" ")
            # A bare token (no scheme) is accepted too, as some clients send it that way.
            key = token.strip() if scheme.lower() == "bearer" else text
        elif name == b"host":
            host = value.decode("latin-1")
    return key, host


async def _read_body(receive: Receive, limit: int = _MAX_BODY) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body"):
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(1210, "request body is too large", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(1210, "The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(1210, "The request body must be a JSON object")
    return body


async def _send(send: Send, status: int, data: bytes, kind: bytes = _JSON) -> None:
    headers = [(b"content-type", kind), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


# What a dropped connection delivers before it dies: headers promising this many bytes
# and the first few of them.
_DROP_LENGTH = b"512"
_DROP_PREFIX = b'{"id":"'


async def _drop(send: Send) -> None:
    """Promise a full body, send a few bytes, then make the server abort the connection."""
    headers = [(b"content-type", _JSON), (b"content-length", _DROP_LENGTH)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": _DROP_PREFIX, "more_body": True})
    raise SimulatedDrop


class SimApp:
    """ASGI entry point over one :class:`SimState`."""

    def __init__(self, state: SimState, root: str = "http://127.0.0.1") -> None:
        self.state = state
        # Fallback origin for result URLs when a request carries no Host header.
        self.root = root

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path.startswith("/_sim/"):
            await self._control(scope, receive, send, path[6:])
            return
        name = _api_name(path)
        if name is not None and name.split("/", 1)[0] in ("files", "batches"):
            await self._batches(scope, receive, send, name)
            return
        endpoint = ENDPOINTS.get(name) if name is not None else None
        poll_id = None
        if endpoint is None and name is not None and name.startswith(_POLL):
            poll_id = name[len(_POLL) :]
        label = endpoint.name if endpoint else "async-result" if poll_id else "unknown"
        ledger = self.state.ledger
        ledger.received(label)
        status: int | None = None  # stays None for drops and cancellation at shutdown
        try:
            status = await self._api(scope, receive, send, endpoint, poll_id)
        except SimulatedDrop:
            raise
        except Exception:
            status = 500  # a bug in the simulator: uvicorn answers 500
            raise
        finally:
            ledger.finished(status)

    async def _error(self, send: Send, err: ApiError) -> int:
        status, body = render_error(err, self.state.config.error_shape)
        await _send(send, status, body)
        return status

    async def _api(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        endpoint: Endpoint | None,
        poll_id: str | None,
    ) -> int:
        state = self.state
        key, host = _auth_and_host(scope)
        root = f"{scope.get('scheme', 'http')}://{host}" if host else self.root
        try:
            if endpoint is None and poll_id is None:
                raise ApiError(1222, status=404)
            method = scope["method"]
            if method != ("GET" if poll_id is not None else "POST"):
                raise ApiError(1222, f"Method {method} is not allowed here", status=405)
            kid = state.gate.authenticate(key)
            if poll_id is not None:
                return await self._poll(send, kid, poll_id, root)
            assert endpoint is not None
            if endpoint.form is not None and _content_type(scope).startswith("multipart/"):
                raw = await _read_body(receive, _MAX_FORM)
                body = endpoint.form(read_form(_content_type(scope), raw))
                del raw
            else:
                body = _parse(await _read_body(receive))
            request_id = body.pop("request_id", None)
            if request_id is not None and not isinstance(request_id, str):
                raise ApiError(1214, "request_id must be a string")
            seen = endpoint.inspect(body)
            fmt = body.get("response_format")
            if isinstance(fmt, dict):
                if fmt.get("type") == "json_schema" and not state.config.json_schema:
                    raise ApiError(1214, "response_format.type must be 'text' or 'json_object'")
                if state.ledger.track_ids:
                    seen_as = orjson.dumps(fmt, option=orjson.OPT_SORT_KEYS).decode()
                    formats = state.ledger.response_formats
                    formats[seen_as] = formats.get(seen_as, 0) + 1
            if seen.prompt is not None and seen.prompt.files:
                state.ledger.files.extend(seen.prompt.files)
            if seen.files:
                state.ledger.files.extend(seen.files)
            state.ledger.authenticated(kid)
            state.gate.check_account(kid, time.monotonic(), endpoint.billable)
        except ApiError as err:
            return await self._error(send, err)
        billed = False
        try:
            markers = read_markers(seen.marked) if seen.marked else NO_MARKERS
            if markers.code is not None and state.config.code_markers:
                state.ledger.fault("marker")
                raise ApiError(markers.code)
            fault = state.gate.draw_fault()
            if fault in _FAULT_CODES:
                state.ledger.fault(fault)
                code, status = _FAULT_CODES[fault]
                raise ApiError(code, status=status)
            model = seen.model
            state.gate.acquire(key, kid, model)
            try:
                delay = state.gate.latency()
                if fault == "stall":
                    state.ledger.fault("stall")
                    delay += state.config.stall_seconds
                if delay > 0.0:
                    await asyncio.sleep(delay)
                if fault == "drop":
                    # The platform failed before finishing: nothing is billed or accepted,
                    # so a retry is not a duplicate. (A stall, by contrast, is billed.)
                    state.ledger.fault("drop")
                    await _drop(send)
                # Both hashes ignore request_id: a resubmission of the same work under a
                # fresh id is still a duplicate and still gets the same answer. The answer
                # also ignores the endpoint, so async chat matches sync chat.
                canon = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
                rid = request_id or state.new_id()
                digest = hashlib.sha256(state.seed_bytes + canon).digest()
                call = Call(body, model, rid, digest, kid, root, markers, seen.prompt)
                answer = endpoint.answer(call, state)
                if state.queue is not None and not await self._serve(state, receive, answer):
                    return _CLIENT_GONE
                streamed = answer.payload.get("_sse")
                data = a.sse_body(streamed) if streamed else orjson.dumps(answer.payload)
                if answer.bill is not None:
                    state.ledger.bill(model, answer.bill, kid)
                    billed = True
                if state.ledger.track_ids and endpoint.tracked:
                    hashed = hashlib.sha256(endpoint.name.encode() + b"\n" + canon)
                    state.ledger.accepted(rid, hashed.hexdigest()[:16])
                await _send(send, 200, data, _SSE if streamed else _JSON)
                return 200
            finally:
                state.gate.release(kid, model)
        except ApiError as err:
            return await self._error(send, err)
        finally:
            if endpoint.billable:
                state.gate.settle(billed, kid)

    async def _serve(self, state: SimState, receive: Receive, answer: h.Answer) -> bool:
        """Queueing mode: wait for a server slot in turn, then hold it for the answer's
        service time. False when the client left meanwhile (its work is spent anyway)."""
        queue = state.queue
        assert queue is not None
        config = state.config
        bill = answer.bill
        tokens = bill.completion_tokens if bill is not None else 0
        service = config.service_seconds + config.service_per_token * tokens
        work = state.ledger.server_work
        # The next message after the body is http.disconnect, sent when the client leaves.
        gone = asyncio.ensure_future(receive())
        try:
            await queue.enter()
            try:
                work["started"] += 1
                loop = asyncio.get_running_loop()
                start = loop.time()
                done, _ = await asyncio.wait({gone}, timeout=service)
                if not done:
                    work["finished"] += 1
                    return True
                # The server notices a lost client mid-generation (or at its start) and
                # stops, having spent `abandon_cost` of the answer's service time.
                work["cancelled"] += 1
                rest = start + service * config.abandon_cost - loop.time()
                if rest > 0:
                    await asyncio.sleep(rest)
                return False
            finally:
                queue.leave()
        finally:
            gone.cancel()

    async def _batches(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        """The File and Batch APIs (sim/batches.py); no admission gate, no faults."""
        state = self.state
        state.ledger.received(name.split("/", 1)[0])
        status: int | None = None
        try:
            key, host = _auth_and_host(scope)
            root = f"{scope.get('scheme', 'http')}://{host}" if host else self.root
            content_type = ""
            for header, value in scope["headers"]:
                if header == b"content-type":
                    content_type = value.decode("latin-1")
            try:
                kid = state.gate.authenticate(key)
                body = await _read_body(receive, b.MAX_FILE_BYTES + (1 << 20))
                reply = b.handle(
                    state,
                    scope["method"],
                    name,
                    scope["query_string"],
                    content_type,
                    body,
                    kid,
                    root,
                    self.run_line,
                )
            except ApiError as err:
                status = await self._error(send, err)
                return
            await _send(send, reply.status, reply.data, reply.kind)
            status = reply.status
        finally:
            state.ledger.finished(status)

    def run_line(
        self, name: str, body: dict[str, Any], kid: str, root: str
    ) -> tuple[int, dict[str, Any], Bill | None]:
        """One batch line through the online handler code, minus admission and faults.

        The answer hashes the body exactly as `_api` does, so a line gets the same choices
        and usage as the same body sent online.
        """
        state = self.state
        endpoint = ENDPOINTS[name]
        try:
            request_id = body.pop("request_id", None)
            if request_id is not None and not isinstance(request_id, str):
                raise ApiError(1214, "request_id must be a string")
            seen = endpoint.inspect(body)
            markers = read_markers(seen.marked) if seen.marked else NO_MARKERS
            if markers.code is not None:
                raise ApiError(markers.code)
            canon = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
            digest = hashlib.sha256(state.seed_bytes + canon).digest()
            rid = request_id or state.new_id()
            call = Call(body, seen.model, rid, digest, kid, root, markers, seen.prompt)
            answer = endpoint.answer(call, state)
        except ApiError as err:
            status, raw = render_error(err, state.config.error_shape)
            return status, orjson.loads(raw), None
        return 200, answer.payload, answer.bill

    async def _poll(self, send: Send, kid: str, task_id: str, root: str) -> int:
        state = self.state
        task = state.tasks.get(task_id, kid)
        fault = state.gate.draw_fault()
        if fault in _FAULT_CODES:
            state.ledger.fault(fault)
            code, status = _FAULT_CODES[fault]
            raise ApiError(code, status=status)
        if fault == "stall":
            state.ledger.fault("stall")
            await asyncio.sleep(state.config.stall_seconds)
        if fault == "drop":
            state.ledger.fault("drop")
            await _drop(send)
        now = time.monotonic()
        state.tasks.settle(now)
        state.ledger.tasks["polls"] += 1
        data = orjson.dumps(poll(task, state, root, now))
        await _send(send, 200, data)
        return 200

    async def _control(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        state = self.state
        method = scope["method"]
        if name.startswith("files/") and method == "GET":
            file_name = name[6:]
            try:
                state.signer.check(file_name, scope["query_string"], state.config.url_ttl)
            except ApiError as err:
                if isinstance(err, UrlExpired):
                    state.ledger.fault("expired")
                await self._error(send, err)
                return
            data, kind = file_bytes(file_name)
            state.ledger.downloads += 1
            await _send(send, 200, data, kind.encode())
            return
        if name == "stats" and method == "GET":
            await _send(send, 200, orjson.dumps(state.stats(time.monotonic())))
        elif name == "config" and method == "GET":
            await _send(send, 200, orjson.dumps(state.public_config()))
        elif name == "config" and method == "POST":
            try:
                updates = _parse(await _read_body(receive))
                state.update(updates)
            except ApiError as err:
                await self._error(send, err)
                return
            except ValueError as exc:
                await self._error(send, ApiError(1214, str(exc)))
                return
            await _send(send, 200, orjson.dumps(state.public_config()))
        elif name == "reset" and method == "POST":
            state.reset()
            await _send(send, 200, b'{"ok":true}')
        elif name == "health":
            await _send(send, 200, b'{"ok":true}')
        else:
            await self._error(send, ApiError(1222, status=404))
