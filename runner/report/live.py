"""The served page's data: the full report, rebuilt rarely, and live figures read cheaply.

`runner report`'s data (`data.load_report`) reads every row: about ten seconds at a million
rows. A page refreshed every few seconds cannot pay that, so it is split in two:

- the *report* (charts, latency, errors by code) is rebuilt at most every
  `max(MIN_AGE_S, 20 x the time its last build took)`, in a worker thread, one build at a
  time, and at once when a run starts or ends;
- the *live figures* (counts, cost, rate, in flight, ETA, each key's state) come from the
  status index (about 0.1 s at a million rows), the last seconds of the timeline and the
  keys table, and are shared by every open page for `LIVE_AGE_S`.

Every read is on a read-only connection of its own, in a transaction of a few milliseconds
to a fraction of a second: in WAL mode the job's writer neither waits for it nor sees it.
The cost between two reports is the report's exact cost plus what the timeline has counted
since, so it stays exact to about a second of work without summing every row.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from ..errors import CheckpointError, UsageError
from . import timeline
from .data import LIVE_SECONDS, load_report, open_readonly

__all__ = ["LIVE_AGE_S", "MIN_AGE_S", "LiveReport", "live_figures"]

MIN_AGE_S = 10.0
LIVE_AGE_S = 2.0
RATE_SECONDS = 30  # the rate is the rows done over the timeline's last this many seconds


class NotReady(Exception):
    """No checkpoint, or no job in it yet (a job that is just starting)."""


def live_figures(checkpoint: Path, report: dict[str, Any] | None) -> dict[str, Any]:
    """Counts, cost, rate, in flight, ETA and keys, as of now (see the module docstring)."""
    if not checkpoint.is_file():
        raise NotReady(f"no checkpoint at {checkpoint} yet")
    try:
        conn = open_readonly(checkpoint)
    except CheckpointError as exc:
        raise NotReady(str(exc)) from exc
    try:
        conn.execute("BEGIN")
        return _figures(conn, report, time.time())
    except sqlite3.OperationalError as exc:
        raise NotReady(f"the checkpoint holds no job yet ({exc})") from exc
    finally:
        conn.close()


def _figures(conn: sqlite3.Connection, report: dict[str, Any] | None, now: float) -> dict[str, Any]:
    job = conn.execute("SELECT total_rows FROM job WHERE key = 'job'").fetchone()
    if job is None:
        raise NotReady("the checkpoint holds no job yet")
    total = int(job[0] or 0)
    counts = dict.fromkeys(("succeeded", "failed", "submitted", "submitting"), 0)
    for status, n in conn.execute("SELECT status, COUNT(*) FROM rows GROUP BY status"):
        counts[status] = int(n)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    run = conn.execute("SELECT id, outcome FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    recent: list[sqlite3.Row] = []
    since = 0
    if timeline.TABLE in tables and run is not None:
        recent = conn.execute(
            f"SELECT * FROM {timeline.TABLE} WHERE run = ? ORDER BY t DESC LIMIT ?",
            [run["id"], RATE_SECONDS],
        ).fetchall()
        if report is not None:
            cut = int(report["generated_at"])
            since = int(
                conn.execute(
                    f"SELECT COALESCE(SUM(cost_nano), 0) FROM {timeline.TABLE} WHERE t >= ?",
                    [cut],
                ).fetchone()[0]
            )
    live = bool(recent and run["outcome"] == "running" and now - recent[0]["t"] < LIVE_SECONDS)
    done = sum(int(r["done"] or 0) for r in recent)
    span = (recent[0]["t"] - recent[-1]["t"] + 1) if recent else 0
    rate = done / span if live and span else 0.0
    terminal = counts["succeeded"] + counts["failed"]
    pending = max(total - terminal, 0)
    keys = []
    if "keys" in tables:
        keys = [
            {"label": r["label"], "state": r["state"], "reason": r["reason"]}
            for r in conn.execute("SELECT label, state, reason FROM keys ORDER BY position")
        ]
    cost = (int(report["summary"]["cost_nano"]) if report else 0) + (since if live else 0)
    return {
        "generated_at": now,
        "live": live,
        "total": total,
        "succeeded": counts["succeeded"],
        "failed": counts["failed"],
        "in_progress": counts["submitted"] + counts["submitting"],
        "pending": pending,
        "cost_nano": cost,
        "rate": round(rate, 2),
        "in_flight": int(recent[0]["in_flight_max"] or 0) if live else 0,
        "cap": int(recent[0]["cap"] or 0) if live else 0,
        "eta_s": round(pending / rate) if rate > 0 and pending else None,
        "keys": keys,
        "run": {"id": run["id"], "outcome": run["outcome"]} if run is not None else None,
        "report_at": report["generated_at"] if report else None,
    }


class LiveReport:
    """The served page's two halves for one checkpoint, cached as the module says.

    `keep_fresh` runs beside the server and rebuilds the report while someone is looking
    (a page asked within `WANTED_S`); a request never waits for a rebuild, only for the
    very first report.
    """

    WANTED_S = 60.0

    def __init__(
        self,
        checkpoint: Path,
        *,
        min_age: float = MIN_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.checkpoint = checkpoint
        self.min_age = min_age
        self._clock = clock
        self.report: dict[str, Any] | None = None
        self.problem: str | None = None  # why there is no report yet
        self._built_at = 0.0
        self._max_age = min_age
        self._runs_seen: Any = None
        self._wanted_at = clock()
        self._fresh = anyio.Event()  # set after each build (or failed attempt)
        self._live: dict[str, Any] | None = None
        self._live_at = 0.0
        self.builds = 0

    async def figures(self) -> dict[str, Any]:
        """The live figures, at most `LIVE_AGE_S` old; raises NotReady before the job."""
        self._wanted_at = now = self._clock()
        if self._live is None or now - self._live_at >= LIVE_AGE_S:
            self._live = await anyio.to_thread.run_sync(live_figures, self.checkpoint, self.report)
            self._live_at = now
        return self._live

    async def page_data(self) -> dict[str, Any]:
        """The last report with the live figures over it; raises NotReady before the job."""
        live = await self.figures()
        if self.report is None or live["run"] != self._runs_seen:
            await self._next_build()
            if self.report is None:
                raise NotReady(self.problem or "the checkpoint holds no job yet")
            live = await self._refigure()
        assert self.report is not None
        data = dict(self.report)
        summary = dict(data["summary"])
        for k in ("succeeded", "failed", "pending", "in_progress", "cost_nano"):
            summary[k] = live[k]
        data.update(summary=summary, live=live["live"], generated_at=live["generated_at"])
        data["live_figures"] = live
        return data

    async def _refigure(self) -> dict[str, Any]:
        self._live = None
        return await self.figures()

    async def _next_build(self) -> None:
        with anyio.fail_after(600):  # the first report of a huge job can take a while
            await self._fresh.wait()

    def _due(self) -> bool:
        now = self._clock()
        if now - self._wanted_at > self.WANTED_S:
            return False
        if self.report is None:
            return True
        live = self._live
        if live is not None and live["run"] != self._runs_seen:
            return True  # a run started or ended: its outcome and runs table changed
        return now - self._built_at >= self._max_age

    async def keep_fresh(self) -> None:
        """Rebuild the report when it is due, until cancelled (one build at a time)."""
        while True:
            if self._due():
                await self.build()
            await anyio.sleep(0.25)

    async def build(self) -> None:
        runs = self._live["run"] if self._live is not None else None
        started = self._clock()
        try:
            self.report = await anyio.to_thread.run_sync(load_report, self.checkpoint)
            self.problem = None
            self._runs_seen = runs
            self._max_age = max(self.min_age, 20 * (self._clock() - started))
            self.builds += 1
        except (CheckpointError, UsageError) as exc:
            self.problem = str(exc)
        self._built_at = self._clock()
        fresh, self._fresh = self._fresh, anyio.Event()
        fresh.set()
