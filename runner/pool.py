"""The worker pool: one lane per model, each capped at that model's tier.

A lane is a bounded stream of rows, an adaptive limiter sized to the model's cap, and a
few more workers than the cap. A worker holds a limiter token only while its request is
on the wire, so rows waiting out a backoff never hold a slot, and the extra workers keep
the slots busy meanwhile (no idle slots while results are written or retries wait).
Results go to the single writer through a bounded stream; nothing here touches SQLite.
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

from .control import Budget, Control, Stopping
from .cost import PriceTable
from .endpoints import parse_success, raise_for_answer
from .errors import (
    FatalAPIError,
    RateLimited,
    RequestFailed,
    RetryableError,
    RowError,
)
from .http import ConnectionDropped, Response, ResponseTimeout, Transport
from .limits import AdaptiveLimiter
from .outcome import Outcome, outcome_for
from .progress import Counters
from .providers import Provider
from .ratelimit import RateLimits, estimate_tokens
from .retry import build_retrying, first_wait
from .settings import Settings
from .spec import ASYNC_ENDPOINTS, Request

__all__ = ["JobContext", "Lane", "Lanes", "fingerprint"]


def fingerprint(endpoint: str, body: bytes) -> str:
    return hashlib.blake2b(endpoint.encode() + b"\0" + body, digest_size=8).hexdigest()


@dataclass
class Lane:
    model: str
    limiter: AdaptiveLimiter
    send: MemoryObjectSendStream[Request]


@dataclass
class JobContext:
    """What every sender of one job shares: where to send, what it costs, when to stop."""

    settings: Settings
    transport: Transport
    prices: PriceTable
    counters: Counters
    control: Control
    budget: Budget
    provider: Provider = field(init=False)

    def __post_init__(self) -> None:
        # Resolved once: a user's providers file must not be re-read per request.
        self.provider = self.settings.provider_info

    def raise_for_answer(self, resp: Response) -> dict[str, Any]:
        """The answer's JSON, or the error it is, as the provider words its errors."""
        info = self.provider
        return raise_for_answer(
            resp, balance_statuses=info.balance_statuses, error_shape=info.error_shape
        )


@dataclass
class Lanes:
    """Creates a lane the first time a model appears in the spec, and feeds rows to it."""

    ctx: JobContext
    results: MemoryObjectSendStream[Outcome]
    task_group: TaskGroup
    submit_task: Callable[..., Any] | None = None
    lanes: dict[str, Lane] = field(default_factory=dict)
    rate: RateLimits | None = None

    def __post_init__(self) -> None:
        if self.rate is None:
            self.rate = RateLimits.from_settings(self.ctx.settings)  # None without --rpm/--tpm

    def _lane(self, model: str) -> Lane:
        lane = self.lanes.get(model)
        if lane is not None:
            return lane
        cap = self.ctx.settings.cap_for(model)
        limiter = AdaptiveLimiter(cap)
        # A small buffer keeps workers fed without reading far ahead of them.
        send, receive = anyio.create_memory_object_stream[Request](max(64, cap))
        lane = Lane(model, limiter, send)
        self.lanes[model] = lane
        self.ctx.counters.cap = sum(x.limiter.cap for x in self.lanes.values())
        for _ in range(cap + max(8, cap // 4)):
            self.task_group.start_soon(self._worker, lane, receive.clone(), self.results.clone())
        receive.close()
        return lane

    async def feed(self, req: Request) -> None:
        send = self._lane(req.model).send
        try:
            send.send_nowait(req)
        except anyio.WouldBlock:
            await send.send(req)

    def close(self) -> None:
        for lane in self.lanes.values():
            lane.send.close()
        self.results.close()

    async def _worker(
        self,
        lane: Lane,
        rows: MemoryObjectReceiveStream[Request],
        results: MemoryObjectSendStream[Outcome],
    ) -> None:
        async with rows, results:
            while True:
                # The non-blocking receive first: anyio's receive() yields to the loop even
                # when a row is ready, and at thousands of rows per second that shows.
                try:
                    req = rows.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        req = await rows.receive()
                    except anyio.EndOfStream:
                        return
                except anyio.EndOfStream:
                    return
                if self.ctx.control.reason is not None:
                    continue  # stopping: leave the row pending for the resume
                if req.endpoint in ASYNC_ENDPOINTS and self.submit_task is not None:
                    await self.submit_task(req, lane, results)
                    continue
                out = await self._run_row(req, lane)
                if out is not None:
                    try:
                        results.send_nowait(out)
                    except anyio.WouldBlock:
                        await results.send(out)

    def _on_retry(self, state: RetryCallState) -> None:
        self.ctx.counters.retries += 1

    async def call(
        self, lane: Lane, path: str, body: bytes, sent: list[float] | None = None
    ) -> tuple[int, bytes, dict[str, Any]]:
        """One attempt: hold a slot only while on the wire; map every failure to our tree."""
        if self.rate is not None:
            await self.rate.acquire(lane.model, estimate_tokens(body))
        limiter = lane.limiter
        counters = self.ctx.counters
        try:
            limiter.acquire_nowait()
        except anyio.WouldBlock:
            await limiter.acquire()
        try:
            if self.ctx.control.reason is not None:
                raise Stopping  # the job stopped while this row waited for a slot
            counters.in_flight += 1
            if counters.in_flight > counters.peak_in_flight:
                counters.peak_in_flight = counters.in_flight
            counters.sent += 1
            if sent is not None and not sent:
                sent.append(time.time())  # the row's latency counts from its first send
            started = time.monotonic()
            try:
                resp = await self.ctx.transport.request(
                    "POST", path, body, self.ctx.settings.request_timeout
                )
            except ResponseTimeout as exc:
                raise RetryableError(str(exc), code="timeout") from exc
            except ConnectionDropped as exc:
                raise RetryableError(str(exc), code="connection") from exc
            finally:
                counters.in_flight -= 1
            try:
                answer = self.ctx.raise_for_answer(resp)
            except RateLimited as exc:
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
            if limiter.succeeded(time.monotonic() - started):
                self._show_caps()
        finally:
            limiter.release()
        return resp.status, resp.body, answer

    def _show_caps(self) -> None:
        """The progress line shows the effective caps, which move under 429s."""
        self.ctx.counters.cap = sum(lane.limiter.current for lane in self.lanes.values())

    async def call_with_retry(
        self, lane: Lane, path: str, body: bytes, sent: list[float] | None = None
    ) -> tuple[int, bytes, dict[str, Any], int]:
        """The first attempt runs bare; tenacity is built only for rows that need a retry."""
        try:
            status, raw, answer = await self.call(lane, path, body, sent)
            return status, raw, answer, 1
        except RetryableError as exc:
            first = exc
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
        body = orjson.dumps(req.body)
        worst = self.ctx.prices.worst_case(req.model, req.body, len(body))
        if not self.ctx.budget.admit(worst, self.ctx.control):
            return None
        sent: list[float] = []
        fp = fingerprint(req.endpoint, body)
        actual = 0
        try:
            status, raw, answer, attempts = await self.call_with_retry(
                lane, "/" + req.endpoint, body, sent
            )
            parsed = parse_success(req.endpoint, raw, answer)
            if self.rate is not None and parsed.usage.total_tokens:
                # TPM was taken at the estimate; the answer says what was really used.
                estimate = estimate_tokens(body, req.body.get("max_tokens"))
                self.rate.refund(req.model, estimate - parsed.usage.total_tokens)
            cost = self.ctx.prices.cost(req.model, parsed.usage)
            actual = cost or 0
            return outcome_for(
                req,
                "failed" if parsed.failure else "succeeded",
                attempts=attempts,
                started=sent[0],
                http_status=status,
                error=parsed.failure,
                parsed=parsed,
                cost_nano=cost,
                request_fp=fp,
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
