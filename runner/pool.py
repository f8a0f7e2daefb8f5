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
from decimal import Decimal
from typing import Any

import anyio
import orjson
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from tenacity import RetryCallState

from .cost import NANO, PriceTable
from .endpoints import Parsed, parse_success, raise_for_answer
from .errors import (
    BudgetExceeded,
    FatalAPIError,
    JobStopped,
    RateLimited,
    RequestFailed,
    RetryableError,
    RowError,
)
from .http import ConnectionDropped, ResponseTimeout, Transport
from .limits import AdaptiveLimiter
from .progress import Counters
from .providers import Provider
from .ratelimit import RateLimits, estimate_tokens
from .retry import build_retrying, first_wait
from .settings import Settings
from .spec import ASYNC_ENDPOINTS, Request
from .spec import RowError as SpecRowError

__all__ = ["Budget", "Control", "Lanes", "invalid_outcome", "outcome_for"]

Outcome = dict[str, Any]

# When a row sets no max_tokens, the budget assumes this many output tokens at worst.
ASSUMED_MAX_OUTPUT = 4096


class Control:
    """The job's stop switch: the first reason wins; everything else reads it."""

    def __init__(self) -> None:
        self.reason: JobStopped | None = None
        self.stopping = anyio.Event()
        self._on_stop: list[Callable[[], None]] = []

    def on_stop(self, fn: Callable[[], None]) -> None:
        self._on_stop.append(fn)

    def stop(self, reason: JobStopped) -> None:
        if self.reason is not None:
            return
        self.reason = reason
        self.stopping.set()
        for fn in self._on_stop:
            fn()


class _Abandoned(Exception):
    """A row waiting to retry when the job stopped: it stays pending for the resume."""


@dataclass(slots=True)
class Budget:
    """--max-cost: spent cost plus the worst case of everything in flight stays within it."""

    limit_nano: int | None
    spent_nano: int = 0
    reserved_nano: int = 0

    @classmethod
    def for_job(cls, max_cost: Decimal | None, spent_nano: int) -> Budget:
        """The budget of a run: --max-cost in nano-units, less what earlier runs spent."""
        limit = None if max_cost is None else int(max_cost * NANO)
        return cls(limit, spent_nano=spent_nano)

    def reserve(self, worst: int) -> bool:
        if self.limit_nano is None:
            return True
        if self.spent_nano + self.reserved_nano + worst > self.limit_nano:
            return False
        self.reserved_nano += worst
        return True

    def settle(self, worst: int, actual: int) -> None:
        if self.limit_nano is not None:
            self.reserved_nano -= worst
        self.spent_nano += actual


def fingerprint(endpoint: str, body: bytes) -> str:
    return hashlib.blake2b(endpoint.encode() + b"\0" + body, digest_size=8).hexdigest()


def outcome_for(
    req: Request,
    status: str,
    *,
    attempts: int,
    started: float,
    finished: float | None = None,
    http_status: int | None = None,
    error: RequestFailed | None = None,
    parsed: Parsed | None = None,
    cost_nano: int | None = None,
    request_fp: str | None = None,
    request_id: str | None = None,
    task_id: str | None = None,
    task_status: str | None = None,
    artifacts: str | None = None,
) -> Outcome:
    finished = time.time() if finished is None else finished
    u = parsed.usage if parsed is not None else None
    return {
        "seq": req.seq,
        "custom_id": req.custom_id,
        "line": req.line,
        "endpoint": req.endpoint,
        "model": req.model,
        "status": status,
        "attempts": attempts,
        "http_status": http_status,
        "error_code": error.code if error else None,
        "error_message": error.message if error else None,
        "request_id": request_id,
        "request_fingerprint": request_fp,
        "task_id": task_id,
        "task_status": task_status,
        "response": parsed.text if parsed is not None else None,
        "prompt_tokens": u.prompt_tokens if u else None,
        "completion_tokens": u.completion_tokens if u else None,
        "cached_tokens": u.cached_tokens if u else None,
        "total_tokens": u.total_tokens if u else None,
        "images": u.images if u else None,
        "videos": u.videos if u else None,
        "cost_nano": cost_nano,
        "started_at": started,
        "finished_at": finished,
        "latency_s": round(finished - started, 6),
        "artifacts": artifacts,
    }


def invalid_outcome(err: SpecRowError) -> Outcome:
    """A spec row that can't be sent: failed with its line-numbered reason, never sent."""
    now = time.time()
    return {
        "seq": err.seq,
        "custom_id": err.custom_id or f"line-{err.line}",
        "line": err.line,
        "status": "failed",
        "attempts": 0,
        "error_code": "invalid_row",
        "error_message": str(err),
        "started_at": now,
        "finished_at": now,
        "latency_s": 0.0,
    }


@dataclass
class Lane:
    model: str
    limiter: AdaptiveLimiter
    send: MemoryObjectSendStream[Request]


@dataclass
class Lanes:
    """Creates a lane the first time a model appears in the spec, and feeds rows to it."""

    settings: Settings
    transport: Transport
    prices: PriceTable
    counters: Counters
    control: Control
    budget: Budget
    results: MemoryObjectSendStream[Outcome]
    task_group: TaskGroup
    submit_task: Callable[..., Any] | None = None
    lanes: dict[str, Lane] = field(default_factory=dict)
    rate: RateLimits | None = None
    provider: Provider = field(init=False)

    def __post_init__(self) -> None:
        if self.rate is None:
            self.rate = RateLimits.from_settings(self.settings)  # None without --rpm/--tpm
        # Resolved once: a user's providers file must not be re-read per request.
        self.provider = self.settings.provider_info

    def _lane(self, model: str) -> Lane:
        lane = self.lanes.get(model)
        if lane is not None:
            return lane
        cap = self.settings.cap_for(model)
        limiter = AdaptiveLimiter(cap)
        # A small buffer keeps workers fed without reading far ahead of them.
        send, receive = anyio.create_memory_object_stream[Request](max(64, cap))
        lane = Lane(model, limiter, send)
        self.lanes[model] = lane
        self.counters.cap = sum(x.limiter.cap for x in self.lanes.values())
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
                if self.control.reason is not None:
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

    def worst_cost(self, req: Request, body: bytes) -> int:
        price = self.prices.price(req.model)
        if price is None:
            return 0
        max_out = req.body.get("max_tokens")
        out_tokens = max_out if isinstance(max_out, int) else ASSUMED_MAX_OUTPUT
        n = req.body.get("n")
        items = n if isinstance(n, int) and n > 0 else 1
        # Bytes bound tokens from above: no tokenizer emits more tokens than input bytes.
        return (
            len(body) * price.input
            + out_tokens * price.output
            + items * (price.image + price.video)
            + price.use
        )

    async def _sleep_or_abandon(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self.control.stopping.wait()
        if self.control.reason is not None:
            raise _Abandoned

    def _on_retry(self, state: RetryCallState) -> None:
        self.counters.retries += 1

    async def call(
        self, lane: Lane, path: str, body: bytes, endpoint: str, sent: list[float] | None = None
    ) -> tuple[int, bytes, dict[str, Any]]:
        """One attempt: hold a slot only while on the wire; map every failure to our tree."""
        if self.rate is not None:
            await self.rate.acquire(lane.model, estimate_tokens(body))
        limiter = lane.limiter
        counters = self.counters
        tokens = limiter.limiter
        # acquire_nowait skips the two loop checkpoints of `async with` when a slot is free.
        try:
            tokens.acquire_nowait()
        except anyio.WouldBlock:
            await tokens.acquire()
        try:
            if self.control.reason is not None:
                raise _Abandoned  # the job stopped while this row waited for a slot
            counters.in_flight += 1
            if counters.in_flight > counters.peak_in_flight:
                counters.peak_in_flight = counters.in_flight
            counters.sent += 1
            if sent is not None and not sent:
                sent.append(time.time())  # the row's latency counts from its first send
            started = time.monotonic()
            try:
                resp = await self.transport.request(
                    "POST", path, body, self.settings.request_timeout
                )
            except ResponseTimeout as exc:
                raise RetryableError(str(exc), code="timeout") from exc
            except ConnectionDropped as exc:
                raise RetryableError(str(exc), code="connection") from exc
            finally:
                counters.in_flight -= 1
            try:
                info = self.provider
                answer = raise_for_answer(
                    resp, balance_statuses=info.balance_statuses, error_shape=info.error_shape
                )
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
            tokens.release()
        return resp.status, resp.body, answer

    def _show_caps(self) -> None:
        """The progress line shows the effective caps, which move under 429s."""
        self.counters.cap = sum(lane.limiter.current for lane in self.lanes.values())

    async def call_with_retry(
        self, lane: Lane, path: str, body: bytes, endpoint: str, sent: list[float] | None = None
    ) -> tuple[int, bytes, dict[str, Any], int]:
        """The first attempt runs bare; tenacity is built only for rows that need a retry."""
        try:
            status, raw, answer = await self.call(lane, path, body, endpoint, sent)
            return status, raw, answer, 1
        except RetryableError as exc:
            first = exc
        attempts = 1
        self.counters.retries += 1
        retrying = build_retrying(
            self.settings.retry,
            on_retry=self._on_retry,
            sleep=self._sleep_or_abandon,
            first_failure=first,
        )
        await self._sleep_or_abandon(first_wait(self.settings.retry, first))
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    status, raw, answer = await self.call(lane, path, body, endpoint, sent)
        except RequestFailed as exc:
            exc.attempts = attempts
            raise
        return status, raw, answer, attempts

    async def _run_row(self, req: Request, lane: Lane) -> Outcome | None:
        body = orjson.dumps(req.body)
        worst = self.worst_cost(req, body)
        if not self.budget.reserve(worst):
            self.control.stop(
                BudgetExceeded(
                    "stopped: the next rows could pass --max-cost "
                    f"({self.budget.limit_nano or 0} nano-units); raise it and resume"
                )
            )
            return None
        sent: list[float] = []
        fp = fingerprint(req.endpoint, body)
        actual = 0
        try:
            status, raw, answer, attempts = await self.call_with_retry(
                lane, "/" + req.endpoint, body, req.endpoint, sent
            )
            parsed = parse_success(req.endpoint, raw, answer)
            cost = self.prices.cost(req.model, parsed.usage)
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
            self.control.stop(exc)
            return None
        except _Abandoned:
            return None
        except Exception as exc:
            err = RowError(f"internal error: {type(exc).__name__}: {exc}", code="internal_error")
            started = sent[0] if sent else time.time()
            return outcome_for(req, "failed", attempts=1, started=started, error=err, request_fp=fp)
        finally:
            self.budget.settle(worst, actual)
