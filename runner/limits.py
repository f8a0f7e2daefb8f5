"""The account tier as a limiter that gives way under 429s and grows back after them.

An anyio CapacityLimiter whose `total_tokens` is adjusted once per window of answers
(at least half a second and a round of `current` answers): lowering it makes new
acquisitions wait, raising it wakes waiters. Decisions look at the *fraction* of 429s in
the window, not at single 429s, because the two kinds mean different things:

- 1302 (or a bare 429) says we are over the account's concurrency: shrink in proportion
  to the overshoot and remember the level, so growth past it is slow (one slot a window).
- 1303 / 1305 / 1312 say the platform is busy: a few percent is noise that must not cost
  throughput; a storm (over 15 %) shrinks the limit, to half the cap at most, since
  random refusals don't stop when we slow down; a quieter window grows it back by an
  eighth, so half the cap is regained in about six windows (three seconds).
"""

from __future__ import annotations

import time
from types import TracebackType

import anyio

__all__ = ["AdaptiveLimiter"]

_STORM = 0.15  # busy-platform 429s above this fraction shrink the limit
_QUIET = 0.08  # and below this fraction let it grow


class AdaptiveLimiter:
    """A slot per request on the wire, at most `current` of them; `current` moves in [1, cap]."""

    def __init__(self, cap: int, *, window: float = 0.5, floor: int = 1) -> None:
        self.cap = max(1, cap)
        self._tokens = anyio.CapacityLimiter(self.cap)
        self._window = window
        self._floor = max(1, min(floor, self.cap))
        self._ceiling: int | None = None  # where 1302s started, if they did
        self._ceiling_at = 0.0
        self._reset(time.monotonic())
        # A moving average of successful requests' latency (capped at 5 s).
        self.typical_latency = 0.0

    def _reset(self, now: float) -> None:
        self._start = now
        self._ok = 0
        self._busy = 0
        self._over = 0

    @property
    def current(self) -> int:
        return int(self._tokens.total_tokens)

    @property
    def borrowed(self) -> int:
        """Slots in use now."""
        return int(self._tokens.borrowed_tokens)

    def acquire_nowait(self) -> None:
        """Take a slot if one is free (raises anyio.WouldBlock otherwise) without yielding:
        `async with` costs two loop checkpoints, which show at thousands of rows a second."""
        self._tokens.acquire_nowait()

    async def acquire(self) -> None:
        await self._tokens.acquire()

    def release(self) -> None:
        self._tokens.release()

    async def __aenter__(self) -> None:
        await self._tokens.acquire()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._tokens.release()

    def rate_limited(self, over_limit: bool = True) -> bool:
        """Note a 429 (`over_limit`: 1302 / bare 429); True when the limit changed."""
        if over_limit:
            self._over += 1
        else:
            self._busy += 1
        return self._maybe_adjust()

    def succeeded(self, latency: float = 0.0) -> bool:
        """Note a success and its latency; True when the limit changed."""
        self._ok += 1
        self.typical_latency += (min(latency, 5.0) - self.typical_latency) * 0.05
        if self._ok < self.current:  # cheap exit on the hot path
            return False
        return self._maybe_adjust()

    def _maybe_adjust(self) -> bool:
        now = time.monotonic()
        answers = self._ok + self._busy + self._over
        if now - self._start < self._window or answers < min(20, self.current):
            return False
        current = self.current
        over, busy = self._over / answers, self._busy / answers
        new = current
        if self._over:
            self._ceiling, self._ceiling_at = current, now
            new = int(current * (1 - over / 2))
        elif busy > _STORM:
            # Random platform 429s don't fall as we shrink: never give up more than half.
            new = max(self.cap // 2, int(current * (1 - busy / 2)))
        elif busy < _QUIET:
            # Probe past a known ceiling one slot at a time; forget it after a minute.
            ceiling = self._ceiling if now - self._ceiling_at < 60 else None
            step = 1 if ceiling is not None and current >= ceiling - 1 else max(1, current // 8)
            new = current + step
        self._reset(now)
        new = max(self._floor, min(self.cap, new))
        if new == current:
            return False
        self._tokens.total_tokens = new
        return True
