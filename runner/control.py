"""The job's stop switch and its spending limit: what every worker consults before it sends.

Online rows, async-task submits and batch files all stop the same way: `Control.stop`
records the first reason, and anything waiting in `Control.pause` (a backoff, a poll
interval) wakes at once and raises `Stopping`, leaving its row or batch at its last
committed step for the resume. `Budget.admit` is the one place --max-cost refuses work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

import anyio

from .cost import NANO
from .errors import BudgetExceeded, JobStopped

__all__ = ["Budget", "Control", "Stopping"]


class Stopping(Exception):
    """The job is stopping: leave this row or batch as it is for the resume."""


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

    async def pause(self, seconds: float) -> None:
        """Wait `seconds`, or less if the job stops meanwhile; raise Stopping if it has."""
        if seconds > 0:
            with anyio.move_on_after(seconds):
                await self.stopping.wait()
        if self.reason is not None:
            raise Stopping


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
        """Reserve `worst` for one more request if the limit allows it."""
        if self.limit_nano is None:
            return True
        if self.spent_nano + self.reserved_nano + worst > self.limit_nano:
            return False
        self.reserved_nano += worst
        return True

    def admit(self, worst: int, control: Control, what: str = "rows") -> bool:
        """Reserve `worst` for one more request, or stop the job: it could pass the limit."""
        if not self.reserve(worst):
            control.stop(
                BudgetExceeded(
                    f"stopped: the next {what} could pass --max-cost "
                    f"({self.limit_nano} nano-units); raise it and resume"
                )
            )
            return False
        return True

    def hold(self, worst: int) -> None:
        """Count spending an earlier run already committed to (a batch it created)."""
        if self.limit_nano is not None:
            self.reserved_nano += worst

    def settle(self, worst: int, actual: int) -> None:
        if self.limit_nano is not None:
            self.reserved_nano -= worst
        self.spent_nano += actual
