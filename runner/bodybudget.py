"""The bytes of request bodies a job holds at once: a budget rows with files borrow from.

A row that names local files holds its encoded body from the moment it is built until its
answer arrives (a retry resends the same bytes), and the transport holds the wire copy
while the request is out. Capping concurrency does not bound that: a hundred 5 MB images
in flight are 1.3 GB. So a row borrows its body's weight before reading its files and
returns it when the request is done; rows wait, in arrival order, while the budget is
spent. Rows without files borrow nothing and never wait here. A body larger than the whole
budget still goes, alone, rather than never.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

__all__ = ["DEFAULT_BODY_BUDGET_MB", "BodyBudget", "held_size"]

DEFAULT_BODY_BUDGET_MB = 128
# A body is held twice while it is out: the row's encoded bytes (kept for a retry) and the
# transport's wire copy.
_COPIES = 2


def held_size(body_bytes: int) -> int:
    """What a request of `body_bytes` on the wire weighs against the budget."""
    return _COPIES * body_bytes


class BodyBudget:
    """Bytes borrowed by requests in flight, at most `total` (one oversized body alone)."""

    def __init__(self, total: int) -> None:
        if total <= 0:
            raise ValueError(f"a body budget must be positive, got {total}")
        self.total = total
        self.held = 0
        self.peak = 0
        self._waiting: deque[tuple[int, anyio.Event]] = deque()

    def _fits(self, n: int) -> bool:
        return self.held == 0 or self.held + n <= self.total

    @asynccontextmanager
    async def hold(self, n: int) -> AsyncIterator[None]:
        """Borrow `n` bytes for the block; wait (first come, first served) until they fit."""
        if n <= 0:
            yield
            return
        if self._waiting or not self._fits(n):
            event = anyio.Event()
            entry = (n, event)
            self._waiting.append(entry)
            try:
                await event.wait()
            except BaseException:
                if entry in self._waiting:
                    self._waiting.remove(entry)
                else:  # granted as it was cancelled: give it back
                    self._give_back(n)
                raise
        else:
            self._take(n)
        try:
            yield
        finally:
            self._give_back(n)

    def _take(self, n: int) -> None:
        self.held += n
        self.peak = max(self.peak, self.held)

    def _give_back(self, n: int) -> None:
        self.held -= n
        # Wake waiters in order while they fit; the first that does not fit blocks the
        # rest, so a large body is not starved by a stream of small ones.
        while self._waiting and self._fits(self._waiting[0][0]):
            size, event = self._waiting.popleft()
            self._take(size)
            event.set()
