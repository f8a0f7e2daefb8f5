"""The account tier as a limiter that gives way under 429s and grows back after them.

Additive-increase / multiplicative-decrease on an anyio CapacityLimiter, whose
`total_tokens` can be changed while borrowers hold tokens: lowering it makes new
acquisitions wait, raising it wakes waiters. One cut per cool-down window, because the
429s of one burst all describe the same overload and must not compound into a collapse.
"""

from __future__ import annotations

import time

import anyio

__all__ = ["AdaptiveLimiter"]


class AdaptiveLimiter:
    def __init__(
        self,
        cap: int,
        *,
        decrease: float = 0.75,
        cooldown: float = 1.0,
        floor: int = 1,
    ) -> None:
        self.cap = max(1, cap)
        self.limiter = anyio.CapacityLimiter(self.cap)
        self._decrease = decrease
        self._cooldown = cooldown
        self._floor = max(1, min(floor, self.cap))
        self._step = max(1, self.cap // 50)
        self._last_cut = -1e9
        self._ok_since_change = 0
        self.cuts = 0

    @property
    def current(self) -> int:
        return int(self.limiter.total_tokens)

    @property
    def borrowed(self) -> int:
        return int(self.limiter.borrowed_tokens)

    def rate_limited(self) -> None:
        now = time.monotonic()
        if now - self._last_cut < self._cooldown:
            return
        new = max(self._floor, int(self.current * self._decrease))
        if new < self.current:
            self.limiter.total_tokens = new
            self.cuts += 1
        self._last_cut = now
        self._ok_since_change = 0

    def succeeded(self) -> None:
        current = self.current
        if current >= self.cap:
            return
        self._ok_since_change += 1
        # One step per window of `current` successes: roughly one step per round trip.
        if self._ok_since_change >= current and time.monotonic() - self._last_cut >= self._cooldown:
            self.limiter.total_tokens = min(self.cap, current + self._step)
            self._ok_since_change = 0
