"""The worker pool of `generate`: the engine's lanes, plus the cache, the check and re-asks.

`CheckedLanes` replaces only the per-row step of `pool.Lanes`; slots, retries, the budget,
the writer and the checkpoint are the engine's. For each row it looks the request up in the
response cache (a hit sends nothing and costs 0), sends it, checks the answer against the
schema, and when the answer is not JSON or does not match, asks again with the answer and
what is wrong with it, up to `max_reasks` times. Every answer is billed, so usage and cost
are summed over all asks; `attempts` counts the asks (0 when the cache answered).
"""

from __future__ import annotations

import sqlite3
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson

from ..bodybudget import held_size
from ..control import Stopping
from ..cost import Usage
from ..endpoints import Parsed, parse_success
from ..errors import FatalAPIError, RequestFailed, RetryableError, RowError
from ..localfiles import FileRefError, has_files, inline_files, inline_size
from ..outcome import Outcome, outcome_for
from ..pool import Lane, Lanes
from ..spec import Request
from .answers import OutputSchema
from .cache import ResponseCache, cache_key

__all__ = ["PROBLEM_KEY", "Asking", "CheckedLanes", "answer_text"]

# A row whose prompt could not be built is written to the job's requests with this key in
# its body and fails here, unsent; the key never reaches the platform.
PROBLEM_KEY = "__generate_problem__"
CACHE_FLUSH_ROWS = 256


def answer_text(response: dict[str, Any]) -> Any:
    """The assistant's text in a chat completion (None if there is none)."""
    choices = response.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        if isinstance(message, dict):
            return message.get("content")
    return None


def finish_reason(response: dict[str, Any]) -> Any:
    """Why the model stopped ("stop", "length": cut at max_tokens), if the answer says."""
    choices = response.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0].get("finish_reason")
    return None


def reask_body(body: dict[str, Any], answer: Any, problem: str) -> dict[str, Any]:
    """The request again, with the unusable answer and what is wrong with it."""
    messages = [
        *body["messages"],
        {"role": "assistant", "content": answer if isinstance(answer, str) else ""},
        {
            "role": "user",
            "content": f"That answer cannot be used: {problem}. Reply again with only one "
            "JSON object that matches the JSON Schema given above.",
        },
    ]
    return {**body, "messages": messages}


def _add(a: Usage, b: Usage) -> Usage:
    return Usage(
        a.prompt_tokens + b.prompt_tokens,
        a.completion_tokens + b.completion_tokens,
        a.cached_tokens + b.cached_tokens,
        a.total_tokens + b.total_tokens,
        a.images + b.images,
        a.videos + b.videos,
        a.uses + b.uses,
    )


@dataclass
class Asking:
    """What `generate` hands the lanes: the schema, the re-ask bound and the cache."""

    schema: OutputSchema | None
    max_reasks: int
    scope: str  # provider and base URL: part of every cache key
    cache: ResponseCache | None = None
    pending: list[tuple[str, str]] = field(default_factory=list)
    hits: int = 0
    reasks: int = 0
    cache_error: str | None = None

    def check(self, text: Any) -> str | None:
        if self.schema is None:
            return None
        return self.schema.check(text)[1]

    async def remember(self, key: str, response: str) -> None:
        """Queue a checked answer for the cache; commit a batch from a worker thread."""
        if self.cache is None:
            return
        self.pending.append((key, response))
        if len(self.pending) >= CACHE_FLUSH_ROWS:
            batch, self.pending = self.pending, []
            await anyio.to_thread.run_sync(self.store, batch)

    def lookup(self, key: str) -> str | None:
        """A cached answer, or None; a cache that cannot be read is switched off, with a warning."""
        assert self.cache is not None
        try:
            return self.cache.get(key)
        except sqlite3.Error as exc:
            self.cache_error = f"the response cache {self.cache.path} cannot be read: {exc}"
            warnings.warn(self.cache_error, RuntimeWarning, stacklevel=1)
            return None

    def store(self, batch: list[tuple[str, str]]) -> None:
        """Cache writes are best effort: a locked or full cache never fails a row."""
        if self.cache is None or self.cache_error is not None:
            return
        try:
            self.cache.put_many(batch)
        except sqlite3.Error as exc:
            self.cache_error = f"the response cache {self.cache.path} refused writes: {exc}"
            warnings.warn(self.cache_error, RuntimeWarning, stacklevel=1)

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        self.store(batch)


@dataclass
class CheckedLanes(Lanes):
    asking: Asking | None = None

    async def _run_row(self, req: Request, lane: Lane) -> Outcome | None:
        asking = self.asking
        assert asking is not None, "CheckedLanes needs asking="
        problem = req.body.get(PROBLEM_KEY)
        if problem is not None:
            err = RowError(str(problem), code="invalid_row")
            return outcome_for(req, "failed", attempts=0, started=time.time(), error=err)
        key = cache_key(asking.scope, req.endpoint, req.body)
        if asking.cache is not None and asking.cache_error is None:
            hit = asking.lookup(key)
            if hit is not None and self._usable(hit):
                asking.hits += 1
                now = time.time()
                parsed = Parsed({}, hit, Usage())
                return outcome_for(
                    req, "succeeded", attempts=0, started=now, parsed=parsed, cost_nano=0,
                    request_fp=key,
                )  # fmt: skip
        try:
            if has_files(req.endpoint, req.body):
                # Its images are read only now: the bytes held at once stay in the budget.
                root = self.ctx.settings.resolved_files_root
                weight = held_size(inline_size(req.endpoint, req.body, root))
                async with self.ctx.bodies.hold(weight):
                    return await self._ask(req, lane, key, asking)
            return await self._ask(req, lane, key, asking)
        except Exception as exc:  # a bug of ours fails the row, never the job (as pool.py)
            err = RowError(f"internal error: {type(exc).__name__}: {exc}", code="internal_error")
            return outcome_for(req, "failed", attempts=1, started=time.time(), error=err)

    def _usable(self, response: str) -> bool:
        assert self.asking is not None
        try:
            text = answer_text(orjson.loads(response))
        except (orjson.JSONDecodeError, AttributeError):
            return False
        return self.asking.check(text) is None

    async def _ask(self, req: Request, lane: Lane, key: str, asking: Asking) -> Outcome | None:
        body = req.body
        usage = Usage()
        cost: int | None = None
        asks = 0
        sent: list[float] = []
        last: Parsed | None = None
        status: int | None = None
        while True:
            data = orjson.dumps(body)
            ctx = self.ctx
            # Priced on the row as written: an image's base64 is not prompt text.
            worst = ctx.prices.worst_case(req.model, body, len(data))
            if has_files(req.endpoint, body):
                try:
                    root = ctx.settings.resolved_files_root
                    data = orjson.dumps(inline_files(req.endpoint, body, root))
                except FileRefError as exc:
                    err = RowError(f"local file: {exc}", code=exc.cap_code or "file_unreadable")
                    return self._done(
                        req, "failed", asks, sent, status, err, last, usage, cost, key
                    )
            if asks == 0 and not ctx.budget.admit(worst, ctx.control):
                return None
            if asks > 0 and not ctx.budget.reserve(worst):
                err = RowError(f"row {req.seq}: no budget left to ask again", code="budget")
                return self._done(req, "failed", asks, sent, status, err, last, usage, cost, key)
            actual = 0
            try:
                status, raw, answer, _ = await self.call_with_retry(
                    lane, "/" + req.endpoint, data, sent
                )
                parsed = parse_success(req.endpoint, raw, answer)
                one = ctx.prices.cost(req.model, parsed.usage)
                actual = one or 0
            except (RowError, RetryableError) as exc:
                if isinstance(exc, RetryableError):
                    exc.message = f"gave up after {exc.attempts} attempts: {exc.message}"
                # attempts counts the asks, the one that failed included
                return self._done(
                    req, "failed", asks + 1, sent, exc.status, exc, last, usage, cost, key
                )
            except FatalAPIError as exc:
                ctx.control.stop(exc)
                return None
            except Stopping:
                return None
            finally:
                ctx.budget.settle(worst, actual)
            asks += 1
            usage = _add(usage, parsed.usage)
            cost = one if cost is None else cost + (one or 0)
            last = parsed
            if parsed.failure is not None:
                return self._done(
                    req, "failed", asks, sent, status, parsed.failure, last, usage, cost, key
                )
            text = answer_text(answer)
            wrong = asking.check(text)
            cut = finish_reason(answer)
            if wrong is not None and cut == "length":
                # Cut at max_tokens: asking again under the same cap would be cut again.
                err = RowError(
                    f"row {req.seq}: the answer was cut at max_tokens (finish_reason "
                    f'"{cut}") before it was complete ({wrong}); raise max_tokens',
                    code="answer_cut",
                )
                return self._done(req, "failed", asks, sent, status, err, last, usage, cost, key)
            if wrong is None:
                await asking.remember(key, parsed.text)
                return self._done(
                    req, "succeeded", asks, sent, status, None, last, usage, cost, key
                )
            if asks > asking.max_reasks:
                err = RowError(
                    f"row {req.seq}: the answer does not match the schema after {asks} "
                    f"ask{'s' if asks != 1 else ''}: "
                    f"{wrong}",
                    code="invalid_output",
                )
                return self._done(req, "failed", asks, sent, status, err, last, usage, cost, key)
            asking.reasks += 1
            ctx.counters.retries += 1
            body = reask_body(req.body, text, wrong)

    @staticmethod
    def _done(
        req: Request,
        status: str,
        asks: int,
        sent: list[float],
        http_status: int | None,
        error: RequestFailed | None,
        last: Parsed | None,
        usage: Usage,
        cost: int | None,
        key: str,
    ) -> Outcome:
        """The row's outcome: the last answer kept (raw text included), usage of all asks."""
        parsed = None if last is None else Parsed(last.body, last.text, usage, last.failure)
        return outcome_for(
            req,
            status,
            attempts=asks,
            started=sent[0] if sent else time.time(),
            http_status=http_status,
            error=error,
            parsed=parsed,
            cost_nano=cost,
            request_fp=key,
        )
