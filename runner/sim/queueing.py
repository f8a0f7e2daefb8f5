"""A server with S decoding slots and a FIFO queue in front of them (vLLM, llama.cpp, SGLang).

The Z.ai platform refuses a request over the account's concurrency at once (1302); a
self-hosted server accepts every request and queues it, so past its capacity more
concurrency only adds latency. A client that gives up on a queued request (a timeout closes
the connection) does not take the work back: the server notices only once the request
reaches a slot, and the slot is busy for `abandon_cost` of the request's service time
anyway. That is what turns a timeout storm into more work for an overloaded server, and
what the ledger's `server_work` counts: tasks started, finished, and cancelled mid-way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

__all__ = ["ServiceQueue"]


class ServiceQueue:
    """At most `slots` requests served at once; the rest wait first come, first served."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.busy = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def resize(self, slots: int) -> None:
        self.slots = slots
        self._hand_on()

    async def enter(self) -> None:
        """Wait for a slot in arrival order (a cancelled waiter leaves its place)."""
        if self.busy < self.slots and not self._waiters:
            self.busy += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.leave()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def leave(self) -> None:
        self.busy -= 1
        self._hand_on()

    def _hand_on(self) -> None:
        while self._waiters and self.busy < self.slots:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.busy += 1
                waiter.set_result(None)
