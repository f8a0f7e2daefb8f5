"""Progress: counters the pool updates, and renderers that only read them.

On a terminal a rich live line (done, in flight, retries, failures, cost so far, rate, ETA);
otherwise a plain line every few seconds on stderr, so overnight logs stay readable.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

import anyio

from .cost import NANO

__all__ = ["Counters", "render_loop"]


@dataclass(slots=True)
class Counters:
    total: int = 0
    already_done: int = 0
    succeeded: int = 0
    failed: int = 0
    sent: int = 0
    retries: int = 0
    rate_limited: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    polling: int = 0
    polls: int = 0  # async-result GETs
    prompt_tokens: int = 0  # of committed rows
    completion_tokens: int = 0
    cost_nano: int = 0
    unpriced: int = 0  # succeeded rows of models with no price: not in cost_nano
    currency: str = "USD"
    cap: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> int:
        return self.succeeded + self.failed

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        remaining = max(self.total - self.already_done - self.done, 0)
        rate = self.rate()
        eta = f"{remaining / rate:,.0f}s" if rate > 0 and remaining else "-"
        # ok and failed count this run; a resume says how many rows earlier runs did, so
        # the three add up to `done`.
        earlier = f" ({self.already_done:,} earlier)" if self.already_done else ""
        cost = f"{self.cost_nano / NANO:.4f} {self.currency}"
        if self.unpriced:
            cost = (
                f"no price ({self.unpriced:,} rows)"
                if not self.cost_nano
                else f">= {cost} ({self.unpriced:,} rows with no price)"
            )
        return (
            f"done {self.already_done + self.done:,}/{self.total:,}{earlier}  "
            f"ok {self.succeeded:,}  failed {self.failed:,}  "
            f"in flight {self.in_flight}/{self.cap}  polling {self.polling}  "
            f"retries {self.retries:,} (429: {self.rate_limited:,})  "
            f"cost {cost}  "
            f"{rate:,.0f} rows/s  eta {eta}"
        )


async def render_loop(counters: Counters, *, stream: TextIO | None = None) -> None:
    """Draw progress until cancelled; the job's task group cancels it when the job ends."""
    out = stream or sys.stderr
    if out.isatty():
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        console = Console(file=out)
        with Live(Text(counters.line()), console=console, refresh_per_second=4) as live:
            try:
                while True:
                    await anyio.sleep(0.25)
                    live.update(Text(counters.line()))
            finally:
                live.update(Text(counters.line()))
    else:
        try:
            while True:
                await anyio.sleep(5.0)
                print(counters.line(), file=out, flush=True)
        finally:
            print(counters.line(), file=out, flush=True)
