"""The worker pool: per model one stream of rows, per (key, model) a set of workers.

Each key is an account (accounts.py) with, per model, an adaptive limiter sized to that
account's cap and a few more workers than the cap. A worker first takes a slot of its own
account, then a row from the model's stream, so rows go to whichever key has a free slot:
no static split, and no key idle while rows wait. A slot is held while the request is on
the wire and, after an answer, by the same worker for its next row; a retry waits without
one and takes a fresh one of the same key, so rows waiting out a backoff never hold a slot,
and the extra workers keep the slots busy meanwhile. A key the platform refuses for good is
retired: the row that met the refusal (and any row that finds its key retired) moves to
another key at once, and the key's workers stop. Results go to the single writer through a
bounded stream; nothing here touches SQLite.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from tenacity import RetryCallState

from .accounts import Account, Accounts
from .agent_files import AgentFiles
from .agents import ASYNC_AGENTS, agents_prefix, request_path
from .artifacts import Downloader
from .bodybudget import BodyBudget, held_size
from .control import Budget, Control, Stopping
from .cost import PriceTable
from .endpoints import ENDPOINT_NOT_FOUND, parse_success, raise_for_answer
from .errors import (
    FatalAPIError,
    RateLimited,
    RequestFailed,
    RetryableError,
    RowError,
    TransportFatal,
    Unreachable,
)
from .forms import form_body
from .health import ServerHealth
from .http import ConnectionDropped, Response, ResponseTimeout, Transport
from .http.base import Body
from .limits import AdaptiveLimiter
from .localfiles import FileRefError, has_files, inline_files, inline_size
from .outcome import Outcome, outcome_for
from .progress import Counters
from .providers import Provider
from .ratelimit import estimate_tokens
from .retry import build_retrying, first_wait
from .settings import Settings
from .slides import deck_files, exports_deck
from .spec import ASYNC_ENDPOINTS, FORM_ENDPOINTS, Request

__all__ = ["JobContext", "Lane", "Lanes", "fingerprint"]


def _total_tokens(answer: dict[str, Any]) -> int:
    usage = answer.get("usage")
    total = usage.get("total_tokens") if isinstance(usage, dict) else None
    return total if isinstance(total, int) and not isinstance(total, bool) else 0


def fingerprint(endpoint: str, body: bytes) -> str:
    return hashlib.blake2b(endpoint.encode() + b"\0" + body, digest_size=8).hexdigest()


@dataclass(eq=False, slots=True)
class Lane:
    """One worker's view of its (key, model): the key's limiter for the model, the model's
    row stream, and whether the worker holds a slot for the row it is about to send."""

    model: str
    limiter: AdaptiveLimiter
    send: MemoryObjectSendStream[Request]
    account: Account
    held: bool = False


@dataclass
class JobContext:
    """What every sender of one job shares: where to send, what it costs, when to stop."""

    settings: Settings
    transport: Transport
    prices: PriceTable
    counters: Counters
    control: Control
    budget: Budget
    accounts: Accounts | None = None
    # Uploads the local glossaries of translation rows (online mode sets it).
    agent_files: AgentFiles | None = None
    # Where result files go (set by Tasks, shared with the slides export).
    downloader: Downloader | None = None
    provider: Provider = field(init=False)
    # Whether the server answers at all (health.py): stops a job nothing can make work.
    health: ServerHealth = field(init=False)
    # Retire a lane's key and point the lane at another (set by Lanes; tasks.py uses it).
    move_lane: Callable[[Lane, FatalAPIError], None] = field(init=False)
    # Agent paths relative to the base URL (agents.py), resolved once.
    _agents_prefix: str = field(init=False, default="")
    # The bytes of file-carrying bodies held at once (bodybudget.py).
    bodies: BodyBudget = field(init=False)

    def __post_init__(self) -> None:
        # Resolved once: a user's providers file must not be re-read per request.
        self.provider = self.settings.provider_info
        self.health = ServerHealth(self.settings.base_url or self.provider.base_url)
        self._agents_prefix = agents_prefix(self.settings.base_url)
        self.bodies = BodyBudget(self.settings.body_budget_mb * 1024 * 1024)
        if self.accounts is None:
            self.accounts = Accounts(self.settings, [self.transport])

    @property
    def pool(self) -> Accounts:
        assert self.accounts is not None
        return self.accounts

    def transport_for(self, fingerprint: str | None) -> Transport:
        """The transport of the key that created a task or a batch (the first key if that
        key is no longer in the pool: the platform then says whether it may be read)."""
        account = self.pool.by_fingerprint(fingerprint)
        return (account or self.pool.first).transport

    def path(self, endpoint: str) -> str:
        """Where a row kind is sent, relative to the base URL (agents beside it)."""
        return request_path(endpoint, self._agents_prefix)

    def raise_for_answer(self, resp: Response) -> dict[str, Any]:
        """The answer's JSON, or the error it is, as the provider words its errors."""
        info = self.provider
        return raise_for_answer(
            resp, balance_statuses=info.balance_statuses, error_shape=info.error_shape
        )


@dataclass
class Lanes:
    """Creates the lanes the first time a model appears in the spec, and feeds rows to them."""

    ctx: JobContext
    results: MemoryObjectSendStream[Outcome]
    task_group: TaskGroup
    submit_task: Callable[..., Any] | None = None
    # Per model its row stream; per (key position, model) that account's limiter.
    streams: dict[str, MemoryObjectSendStream[Request]] = field(default_factory=dict)
    limiters: dict[tuple[int, str], AdaptiveLimiter] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ctx.move_lane = self._move

    def _stream(self, model: str) -> MemoryObjectSendStream[Request]:
        send = self.streams.get(model)
        if send is not None:
            return send
        settings = self.ctx.settings
        accounts = self.ctx.pool.items
        caps = [settings.cap_for(model, a.key.spec) for a in accounts]
        # A small buffer keeps workers fed without reading far ahead of them.
        send, receive = anyio.create_memory_object_stream[Request](max(64, sum(caps)))
        self.streams[model] = send
        for n, (account, cap) in enumerate(zip(accounts, caps, strict=True)):
            limiter = self.limiters[n, model] = AdaptiveLimiter(
                cap, probe=self.ctx.provider.probe_capacity
            )
            for _ in range(cap + max(8, cap // 4)):
                lane = Lane(model, limiter, send, account)
                rows, results = receive.clone(), self.results.clone()
                self.task_group.start_soon(self._worker, lane, rows, results)
        receive.close()
        self.ctx.counters.cap = sum(x.cap for x in self.limiters.values())
        return send

    async def feed(self, req: Request) -> None:
        send = self.streams.get(req.model) or self._stream(req.model)
        try:
            send.send_nowait(req)
        except anyio.WouldBlock:
            await send.send(req)

    def close(self) -> None:
        for send in self.streams.values():
            send.close()
        self.results.close()

    async def _worker(
        self,
        lane: Lane,
        rows: MemoryObjectReceiveStream[Request],
        results: MemoryObjectSendStream[Outcome],
    ) -> None:
        account = lane.account
        async with rows, results:
            try:
                while account.retired is None:
                    # A slot of this key first, then a row: a key with no free slot leaves
                    # the rows to the others. A worker whose last request succeeded still
                    # holds its slot (`Lanes.call`) and sends its next row at once. The
                    # non-blocking calls first: anyio's acquire() and receive() yield to
                    # the loop even when ready, which shows at thousands of rows a second.
                    if not lane.held:
                        try:
                            lane.limiter.acquire_nowait()
                        except anyio.WouldBlock:
                            await lane.limiter.acquire()
                        lane.held = True
                    if account.retired is not None:
                        return
                    try:
                        req = rows.receive_nowait()
                    except anyio.WouldBlock:
                        # No slot idles while the stream is empty: `call` takes one again
                        # for the row. (A shard's lease loop gives back only idle slots, so
                        # held ones could deadlock two shards whose readers each wait on
                        # the model the other holds every slot of.)
                        self._let_go(lane)
                        req = await rows.receive()
                    if self.ctx.control.reason is not None:
                        self._let_go(lane)
                        continue  # stopping: leave the row pending for the resume
                    if self.submit_task is not None and (
                        req.endpoint in ASYNC_ENDPOINTS
                        or (req.endpoint == "agents" and req.model in ASYNC_AGENTS)
                    ):
                        self._let_go(lane)  # the submit takes its slot itself
                        await self.submit_task(req, lane, results)
                        continue
                    out = await self._run_row(req, lane)
                    if out is not None:
                        if out.attempts:
                            out.key_fp = lane.account.fingerprint
                        try:
                            results.send_nowait(out)
                        except anyio.WouldBlock:
                            self._let_go(lane)  # no slot idles while the writer catches up
                            await results.send(out)
            except anyio.EndOfStream:
                return
            finally:
                self._let_go(lane)

    @staticmethod
    def _let_go(lane: Lane) -> None:
        """Release the slot the lane's worker holds, if it holds one."""
        if lane.held:
            lane.held = False
            lane.limiter.release()

    def _on_retry(self, state: RetryCallState) -> None:
        self.ctx.counters.retries += 1

    async def call(
        self, lane: Lane, path: str, body: Body, sent: list[float] | None = None
    ) -> tuple[int, bytes, dict[str, Any]]:
        """One attempt: hold a slot only while on the wire; map every failure to our tree."""
        account = lane.account
        limiter = lane.limiter
        counters = self.ctx.counters
        if lane.held:  # the worker took it before the row, or kept it from its last
            lane.held = False
        else:
            try:
                limiter.acquire_nowait()
            except anyio.WouldBlock:
                await limiter.acquire()
        answered = False
        try:
            if account.retired is not None:  # call_with_retry moves the row to another key
                raise FatalAPIError(account.why, code=account.retired.code)
            estimate = 0
            if account.rate is not None:
                estimate = estimate_tokens(body)
                await account.rate.acquire(lane.model, estimate)
            if self.ctx.control.reason is not None:
                raise Stopping  # the job stopped while this row waited for a slot
            counters.in_flight += 1
            if counters.in_flight > counters.peak_in_flight:
                counters.peak_in_flight = counters.in_flight
            counters.sent += 1
            limiter.sent += 1
            if sent is not None and not sent:
                sent.append(time.time())  # the row's latency counts from its first send
            started = time.monotonic()
            try:
                resp = await account.transport.request(
                    "POST", path, body, self.ctx.settings.request_timeout
                )
            except ResponseTimeout as exc:
                # A server that queues answers late, then not at all: a timeout lowers the
                # limit (limits.py), and the retry waits for a slot under the new one.
                if limiter.timed_out(started):
                    self._show_caps()
                raise RetryableError(str(exc), code="timeout") from exc
            except Unreachable as exc:
                self.ctx.health.missed(exc.kind, str(exc))
                raise RetryableError(str(exc), code="connection") from exc
            except ConnectionDropped as exc:
                raise RetryableError(str(exc), code="connection") from exc
            finally:
                counters.in_flight -= 1
            try:
                answer = self.ctx.raise_for_answer(resp)
            except RowError as exc:
                if exc.code == ENDPOINT_NOT_FOUND:
                    self.ctx.health.missed("not found", f"HTTP 404 for /{path.lstrip('/')}")
                else:
                    self.ctx.health.answered()
                raise
            except RateLimited as exc:
                self.ctx.health.answered()
                counters.rate_limited += 1
                over = exc.code in (None, "1302", "429")
                if limiter.rate_limited(over_limit=over):
                    self._show_caps()
                if over:
                    # The platform answers 1302 at once, so a released slot would be
                    # refused again within a millisecond; keep it for about one request's
                    # time, as if the refused request had been served.
                    await anyio.sleep(limiter.typical_latency)
                raise
            except RetryableError:
                self.ctx.health.answered()
                raise
            self.ctx.health.answered()
            if limiter.succeeded(time.monotonic() - started):
                self._show_caps()
            if account.rate is not None:
                # TPM was taken at the estimate; the answer says what this key really used.
                used = _total_tokens(answer)
                if used:
                    account.rate.refund(lane.model, estimate - used)
            answered = True
        finally:
            # After an answer the slot goes with the worker to its next row, unless the limit
            # fell meanwhile: a hand-over to a waiting worker would send that row only after
            # every other answer ready on the loop was handled, so in a wave of thousands of
            # answers the last resend would wait for the whole wave.
            if answered and limiter.keep():
                lane.held = True
            else:
                limiter.release()
        return resp.status, resp.body, answer

    def _show_caps(self) -> None:
        """The progress line shows the effective caps, which move under 429s."""
        pool = self.ctx.pool.items
        self.ctx.counters.cap = sum(
            limiter.current for (n, _), limiter in self.limiters.items() if pool[n].retired is None
        )

    async def call_with_retry(
        self, lane: Lane, path: str, body: Body, sent: list[float] | None = None
    ) -> tuple[int, bytes, dict[str, Any], int]:
        """Send with retries; a key the platform refuses for good is retired and the row
        moves to another key (`lane` then names the key that answered). The first attempt
        runs bare; tenacity is built only for rows that need a retry."""
        while True:
            try:
                try:
                    status, raw, answer = await self.call(lane, path, body, sent)
                    return status, raw, answer, 1
                except RetryableError as exc:
                    return await self._retry(lane, path, body, sent, exc)
            except FatalAPIError as exc:
                if isinstance(exc, TransportFatal):
                    raise
                self._move(lane, exc)

    def _move(self, lane: Lane, exc: FatalAPIError) -> None:
        """Retire the lane's key and point the lane at the active key with most free slots;
        raise the job's stop reason when none is left."""
        self._let_go(lane)
        pool = self.ctx.pool
        pool.retire(lane.account, exc)
        self._show_caps()
        best: tuple[int, Account, AdaptiveLimiter] | None = None
        for n, account in enumerate(pool.items):
            limiter = self.limiters.get((n, lane.model))
            if account.retired is None and limiter is not None:
                free = limiter.current - limiter.borrowed
                if best is None or free > best[0]:
                    best = (free, account, limiter)
        if best is None:
            raise pool.exhausted() from None
        lane.account, lane.limiter = best[1], best[2]

    async def _retry(
        self,
        lane: Lane,
        path: str,
        body: Body,
        sent: list[float] | None,
        first: RetryableError,
    ) -> tuple[int, bytes, dict[str, Any], int]:
        """The attempts after a first that failed, under the tenacity policy."""
        attempts = 1
        self.ctx.counters.retries += 1
        policy = self.ctx.settings.retry
        retrying = build_retrying(
            policy, on_retry=self._on_retry, sleep=self.ctx.control.pause, first_failure=first
        )
        await self.ctx.control.pause(first_wait(policy, first))
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    status, raw, answer = await self.call(lane, path, body, sent)
        except RequestFailed as exc:
            exc.attempts = attempts
            raise
        return status, raw, answer, attempts

    async def _run_row(self, req: Request, lane: Lane) -> Outcome | None:
        if req.endpoint == "agents" and self.ctx.agent_files is not None:
            try:  # a local glossary becomes its uploaded file's id, before the row is sent
                req = await self.ctx.agent_files.resolve(req, lane.account)
            except (RowError, RetryableError) as exc:
                return outcome_for(req, "failed", attempts=0, started=time.time(), error=exc)
            except FatalAPIError as exc:
                self.ctx.control.stop(exc)
                return None
            except Stopping:
                return None
        if req.endpoint in FORM_ENDPOINTS or has_files(req.endpoint, req.body):
            # Its files are read only now: the bytes held at once stay within the budget.
            root = self.ctx.settings.resolved_files_root
            weight = held_size(inline_size(req.endpoint, req.body, root))
            async with self.ctx.bodies.hold(weight):
                return await self._send_row(req, lane)
        return await self._send_row(req, lane)

    async def _send_row(self, req: Request, lane: Lane) -> Outcome | None:
        body = orjson.dumps(req.body)
        # Priced on the row as written: a file's base64 is not prompt text.
        worst = self.ctx.prices.worst_case(req.model, req.body, len(body))
        payload: Body = body
        if req.endpoint in FORM_ENDPOINTS or has_files(req.endpoint, req.body):
            # Read only now, and dropped with this frame once the row is answered.
            root = self.ctx.settings.resolved_files_root
            try:
                if req.endpoint in FORM_ENDPOINTS:
                    # A form's file is read by the transport as it sends; the fingerprint
                    # stays the row's own (its path).
                    payload = form_body(req.body, root)
                else:
                    body = payload = orjson.dumps(inline_files(req.endpoint, req.body, root))
            except FileRefError as exc:
                err = RowError(f"local file: {exc}", code=exc.cap_code or "file_unreadable")
                return outcome_for(req, "failed", attempts=0, started=time.time(), error=err)
        if not self.ctx.budget.admit(worst, self.ctx.control):
            return None
        sent: list[float] = []
        fp = fingerprint(req.endpoint, body)
        actual = 0
        try:
            status, raw, answer, attempts = await self.call_with_retry(
                lane, self.ctx.path(req.endpoint), payload, sent
            )
            parsed = parse_success(req.endpoint, raw, answer, self.ctx.settings.keep_response)
            cost = self.ctx.prices.cost(req.model, parsed.usage) if parsed.priced else None
            actual = cost or 0
            failure, artifacts = parsed.failure, None
            if failure is None and exports_deck(req):
                try:
                    artifacts = orjson.dumps(await deck_files(self, req, lane, answer)).decode()
                except RowError as exc:
                    failure = exc
            return outcome_for(
                req,
                "failed" if failure else "succeeded",
                attempts=attempts,
                started=sent[0],
                http_status=status,
                error=failure,
                parsed=parsed,
                cost_nano=cost,
                request_fp=fp,
                artifacts=artifacts,
            )
        except (RowError, RetryableError) as exc:
            if isinstance(exc, RetryableError):
                exc.message = f"gave up after {exc.attempts} attempts: {exc.message}"
            return outcome_for(
                req,
                "failed",
                attempts=exc.attempts,
                started=sent[0] if sent else time.time(),
                http_status=exc.status,
                error=exc,
                request_fp=fp,
            )
        except FatalAPIError as exc:
            self.ctx.control.stop(exc)
            return None
        except Stopping:
            return None
        except Exception as exc:
            err = RowError(f"internal error: {type(exc).__name__}: {exc}", code="internal_error")
            started = sent[0] if sent else time.time()
            return outcome_for(req, "failed", attempts=1, started=started, error=err, request_fp=fp)
        finally:
            self.ctx.budget.settle(worst, actual)
