"""Requests-per-minute and tokens-per-minute budgets, as token buckets per model.

SiliconFlow limits an account per model by RPM and TPM (whichever is hit first, API-NOTES
9) rather than by in-flight requests, so a job there needs both: the concurrency cap
(pool.py) bounds what is on the wire, these buckets bound what is *sent per minute*.
The pool awaits `RateLimits.acquire(model, tokens)` before it takes a concurrency slot,
so a row waiting for budget never holds a slot.

A bucket of `limit` per minute holds at most one second's worth (`burst`) and refills at
`(limit - burst) / 60` per second, so any 60-second window admits at most `limit`: a
server counting over a sliding minute never sees more than it allows, and the steady
rate is still `limit - limit/60`. A request larger than the burst (a long prompt with a
big `max_tokens` against a small TPM) waits for a full bucket and then takes it into
debt, which later requests pay back; without that it could never pass.

Waiters are served in arrival order (one lock), so a large request is not starved by a
stream of small ones.

A request's tokens are estimated before it is sent, since TPM counts input and output:
``len(body bytes) // 3 + max_tokens`` (JSON bytes over-count the prompt a little, which
errs on the safe side), with `DEFAULT_MAX_OUTPUT` when the row sets no max_tokens. Once
the answer arrives the pool calls `RateLimits.refund` with the estimate less the answer's
`usage.total_tokens`, so the bucket follows real usage instead of the estimate.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import orjson

from .forms import form_tokens
from .http.base import Body, Multipart

__all__ = ["DEFAULT_MAX_OUTPUT", "RateLimiter", "RateLimits", "TokenBucket", "estimate_tokens"]

# Output tokens assumed for a row without max_tokens (the platform default is of this order).
DEFAULT_MAX_OUTPUT = 1024
_WINDOW = 60.0


# What one inlined image or document is taken to count against TPM: about what a vision
# model bills for a large image (the platform does not say before it answers).
FILE_TOKENS = 1600
_INLINE = re.compile(rb"data:[\w.+/-]+;base64,[A-Za-z0-9+/=]*")


def estimate_tokens(body: Body, max_tokens: Any = None) -> int:
    """Tokens a request may count against TPM: ``len(body) // 3 + max_tokens``.

    `max_tokens` may be passed when the caller already has the parsed body; otherwise it is
    read from `body` (one orjson parse, only done when a TPM limit is set). A form (an audio
    upload) counts its text and the longest audio it may carry, not its file's bytes.
    """
    if isinstance(body, Multipart):
        return form_tokens(body) + DEFAULT_MAX_OUTPUT
    if max_tokens is None:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        max_tokens = parsed.get("max_tokens") if isinstance(parsed, dict) else None
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
        max_tokens = DEFAULT_MAX_OUTPUT
    size, files = len(body), 0
    if b";base64," in body:
        # An inlined file is not prompt text: its base64 would count megabytes as tokens.
        for m in _INLINE.finditer(body):
            size -= m.end() - m.start()
            files += 1
    return size // 3 + files * FILE_TOKENS + int(max_tokens)


class TokenBucket:
    """`limit` units per minute; see the module docstring for the burst and the debt."""

    def __init__(
        self,
        limit: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        if limit < 1:
            raise ValueError("a per-minute limit must be at least 1")
        self.limit = limit
        self.burst = max(1, limit // 60)
        self.rate = max(limit - self.burst, 1) / _WINDOW  # units per second
        self._clock = clock
        self._sleep = sleep
        self._level = float(self.burst)
        self._stamp = clock()
        self._lock = anyio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(float(self.burst), self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    def wait_time(self, n: int) -> float:
        """Seconds until `n` units could be taken (0 when they can be now)."""
        self._refill()
        need = min(float(n), float(self.burst))
        return max(0.0, (need - self._level) / self.rate)

    async def acquire(self, n: int = 1) -> None:
        async with self._lock:
            wait = self.wait_time(n)
            if wait > 0.0:
                # The lock keeps everyone else out, so after this sleep the units are
                # there (up to float rounding, which only adds a hair of debt).
                await self._sleep(wait)
                self._refill()
            self._level -= n  # may go below zero for n > burst: the debt

    def refund(self, n: int) -> None:
        """Correct the level by units taken but not used: ``n`` > 0 gives them back (the
        answer's real usage was smaller than the estimate), ``n`` < 0 takes the excess as
        debt (it was larger), so the bucket follows what the platform really counted."""
        if n:
            self._refill()
            self._level = min(float(self.burst), self._level + n)


class RateLimiter:
    """One model's RPM and TPM buckets; either may be absent."""

    def __init__(
        self,
        rpm: int | None,
        tpm: int | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.requests = TokenBucket(rpm, clock=clock, sleep=sleep) if rpm else None
        self.tokens = TokenBucket(tpm, clock=clock, sleep=sleep) if tpm else None

    async def acquire(self, tokens: int) -> None:
        """Wait until one more request of `tokens` estimated tokens fits both budgets."""
        if self.requests is not None:
            await self.requests.acquire(1)
        if self.tokens is not None:
            await self.tokens.acquire(tokens)

    def refund(self, tokens: int) -> None:
        if self.tokens is not None:
            self.tokens.refund(tokens)


class RateLimits:
    """The job's per-model limiters, created the first time a model asks."""

    def __init__(
        self,
        rpm: int | None,
        tpm: int | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self._clock = clock
        self._sleep = sleep
        self._models: dict[str, RateLimiter] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> RateLimits | None:
        """None when neither the settings nor the provider set a limit (no cost per row)."""
        info = settings.provider_info
        rpm = settings.rpm if settings.rpm is not None else info.rpm
        tpm = settings.tpm if settings.tpm is not None else info.tpm
        if not rpm and not tpm:
            return None
        return cls(rpm, tpm)

    def for_model(self, model: str) -> RateLimiter:
        limiter = self._models.get(model)
        if limiter is None:
            limiter = self._models[model] = RateLimiter(
                self.rpm, self.tpm, clock=self._clock, sleep=self._sleep
            )
        return limiter

    async def acquire(self, model: str, tokens: int) -> None:
        await self.for_model(model).acquire(tokens)

    def refund(self, model: str, tokens: int) -> None:
        self.for_model(model).refund(tokens)
