"""A per-second row of the job's counters in the checkpoint, for `runner report`'s charts.

Nothing here runs per request. The pool already keeps its counters (`progress.Counters`:
sent, 429s, retries, in flight, the effective limit, rows done, cost) for the progress
line; a sampler reads them four times a second and, once a second, appends the
differences as one row of the `timeline` table, in one small transaction under the
writer's lock. The hot path therefore pays nothing for the timeline, and the sampler
costs the same at 10 rows/s as at 5,000.

Rows are keyed by (run, second), so the timelines of a job's runs (a first run, its
resumes) stay side by side in the checkpoint, and a report draws them with the gaps
between them.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..progress import Counters

__all__ = ["COLUMNS", "TABLE", "Recorder", "ensure_table", "record"]

TABLE = "timeline"
# Per second: `sent` attempts put on the wire, `done` rows answered and committed (of which
# `failed`), `rate_limited` 429 answers, `retries`, `cost_nano` committed; gauges over the
# second: `in_flight` (mean of the samples), `in_flight_max`, `cap` (the effective
# concurrency limit, summed over models, as the adaptive limiter set it), `polling`.
COLUMNS = (
    "sent",
    "done",
    "failed",
    "rate_limited",
    "retries",
    "cost_nano",
    "in_flight",
    "in_flight_max",
    "cap",
    "polling",
)
_DELTAS = ("sent", "done", "failed", "rate_limited", "retries", "cost_nano")
SAMPLES_PER_SECOND = 4


def ensure_table(conn: sqlite3.Connection) -> None:
    columns = ", ".join(f"{c} {'REAL' if c == 'in_flight' else 'INTEGER'}" for c in COLUMNS)
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {TABLE} (run INTEGER, t INTEGER, {columns}, "
        "PRIMARY KEY (run, t))"
    )


def _totals(c: Counters) -> tuple[int, ...]:
    return (c.sent, c.done, c.failed, c.rate_limited, c.retries, c.cost_nano)


@dataclass
class Recorder:
    """Turns samples of one run's counters into per-second rows (no I/O: easy to test)."""

    counters: Counters
    run: int
    pending: list[tuple[Any, ...]] = field(default_factory=list)
    _second: int = -1
    _last: tuple[int, ...] = ()
    _sum: int = 0
    _max: int = 0
    _n: int = 0

    def __post_init__(self) -> None:
        self._last = _totals(self.counters)

    def sample(self, now: float) -> None:
        """One look at the gauges; a new second closes the previous one's row."""
        second = int(now)
        if second != self._second:
            self.close_second()
            self._second = second
        in_flight = self.counters.in_flight
        self._sum += in_flight
        self._n += 1
        if in_flight > self._max:
            self._max = in_flight

    def close_second(self) -> None:
        if self._n == 0:
            return
        c = self.counters
        totals = _totals(c)
        deltas = [a - b for a, b in zip(totals, self._last, strict=True)]
        self._last = totals
        mean = round(self._sum / self._n, 2)
        self.pending.append((self.run, self._second, *deltas, mean, self._max, c.cap, c.polling))
        self._sum = self._max = self._n = 0

    def take(self) -> list[tuple[Any, ...]]:
        rows, self.pending = self.pending, []
        return rows


def write_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Append (or, for a replayed second, replace) timeline rows in one transaction."""
    if not rows:
        return
    marks = ", ".join("?" for _ in range(len(COLUMNS) + 2))
    with conn:
        conn.executemany(
            f"INSERT OR REPLACE INTO {TABLE} (run, t, {', '.join(COLUMNS)}) VALUES ({marks})",
            rows,
        )


async def record(
    counters: Counters, conn: sqlite3.Connection, lock: anyio.CapacityLimiter, run: int
) -> None:
    """Sample `counters` until cancelled, committing a row per second; the last on the way out.

    `lock` is the writer's: the checkpoint's connection is used by one thread at a time.
    A failed write loses only chart data, never a result, so it is not allowed to stop
    the job.
    """
    rec = Recorder(counters, run)

    async def flush() -> None:
        rows = rec.take()
        if rows:
            # The timeline is best effort; the rows' results are not.
            with contextlib.suppress(sqlite3.Error):
                await anyio.to_thread.run_sync(write_rows, conn, rows, limiter=lock)

    try:
        await anyio.to_thread.run_sync(ensure_table, conn, limiter=lock)
    except sqlite3.Error:
        return
    try:
        while True:
            for _ in range(SAMPLES_PER_SECOND):
                rec.sample(time.time())
                await anyio.sleep(1 / SAMPLES_PER_SECOND)
            await flush()
    finally:
        with anyio.CancelScope(shield=True):
            rec.sample(time.time())
            rec.close_second()
            await flush()
