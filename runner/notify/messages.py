"""What a message says: one event of a job (finished, stopped, failing) as plain data.

A message carries counts, cost, times, paths and the stop's reason and remedy: never a key,
a prompt or an answer (the reason text has been through `redact`, and rows' contents are
never read here). The same dict is the body of a plain `--notify URL`; `text` renders it as
the few lines a chat app shows.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..cost import NANO
from ..errors import BudgetExceeded, FatalAPIError, Interrupted, JobStopped, TransportFatal

__all__ = ["FailureWatch", "ended", "failing", "stop_kind", "text"]

ARREARS = "1113"  # the platform's code for an account in arrears (an empty balance)


def stop_kind(reason: BaseException | None, pending: int) -> str | None:
    """Why a job stopped early, as one word a script can match; None if it did not."""
    if isinstance(reason, Interrupted):
        return "signal"
    if isinstance(reason, BudgetExceeded):
        return "max_cost"
    if isinstance(reason, TransportFatal):
        return "transport"
    if isinstance(reason, FatalAPIError):
        if str(reason).startswith("every key is retired"):
            return "keys_retired"
        return "arrears" if reason.code == ARREARS else "refused"
    if isinstance(reason, JobStopped):
        return "stopped"
    if reason is not None:
        return "error"
    return "pending" if pending else None


def _base(
    job: str, out: Path, spec: Path, summary: dict[str, Any], currency: str
) -> dict[str, Any]:
    nano = int(summary.get("cost_nano") or 0)
    return {
        "job": job,
        "host": socket.gethostname(),
        "out": str(out),
        "spec": str(spec),
        "total": int(summary.get("total") or 0),
        "succeeded": int(summary.get("succeeded") or 0),
        "failed": int(summary.get("failed") or 0),
        "pending": int(summary.get("pending") or 0),
        "cost": nano / NANO,
        "cost_exact": str(Decimal(nano) / NANO),
        "currency": currency,
    }


def ended(
    *,
    job: str,
    out: Path,
    spec: Path,
    summary: dict[str, Any],
    currency: str,
    wall_s: float,
    reason: BaseException | None,
    message: str,
    results: Path | None,
) -> dict[str, Any]:
    """`finished` (every row has its result) or `stopped` (resumable), with what to do next."""
    kind = stop_kind(reason, int(summary.get("pending") or 0))
    event = _base(job, out, spec, summary, currency)
    event.update(
        event="stopped" if kind else "finished",
        wall_s=round(wall_s, 1),
        results=str(results) if results else None,
        message=message,
    )
    if kind:
        event["reason"] = kind
        event["next"] = _next_step(kind, out, spec)
    return event


def _next_step(kind: str, out: Path, spec: Path) -> str:
    if kind == "max_cost":
        return f"raise --max-cost, then: runner run {spec} --out {out} --max-cost AMOUNT"
    if kind == "error":
        return f"fix what the message says, then: runner resume {out}"
    if kind in ("arrears", "keys_retired", "refused"):
        return f"put the account(s) in order (see the message), then: runner resume {out}"
    return f"runner resume {out}"


@dataclass
class FailureWatch:
    """Whether the share of failed rows is rising: at most one `failing` message an hour.

    Looks at the rows answered in the last `window` seconds; it fires when at least
    `min_rows` of them came back, `threshold` or more of them failed, and that share is
    at least twice the job's share before the window (a job whose every tenth row is
    filtered by design does not page anyone every hour).
    """

    window: float = 300.0
    min_rows: int = 50
    threshold: float = 0.2
    quiet: float = 3600.0
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    last_alert: float | None = None

    def observe(self, now: float, done: int, failed: int) -> dict[str, Any] | None:
        self.samples.append((now, done, failed))
        while len(self.samples) > 2 and self.samples[1][0] <= now - self.window:
            self.samples.pop(0)
        t0, done0, failed0 = self.samples[0]
        rows, fails = done - done0, failed - failed0
        if rows < self.min_rows or now - t0 < self.window / 2:
            return None
        share = fails / rows
        before = failed0 / done0 if done0 else 0.0
        if share < self.threshold or share < 2 * before:
            return None
        if self.last_alert is not None and now - self.last_alert < self.quiet:
            return None
        self.last_alert = now
        return {"rows": rows, "failed": fails, "share": round(share, 4),
                "share_before": round(before, 4), "window_s": round(now - t0)}  # fmt: skip


def failing(
    *,
    job: str,
    out: Path,
    spec: Path,
    summary: dict[str, Any],
    currency: str,
    window: dict[str, Any],
) -> dict[str, Any]:
    event = _base(job, out, spec, summary, currency)
    event.update(event="failing", window=window, next=f"runner status {out}")
    return event


def text(event: dict[str, Any]) -> str:
    """The message as a chat app shows it: a headline and a few lines."""
    name = Path(event["spec"]).name
    cost = f"{Decimal(event['cost_exact']):f} {event['currency']}"
    counts = (
        f"{event['succeeded']:,} succeeded, {event['failed']:,} failed, "
        f"{event['pending']:,} pending of {event['total']:,}; cost {cost}"
    )
    where = f"{event['host']}:{event['out']}"
    if event["event"] == "finished":
        wall = event.get("wall_s") or 0
        return (
            f"runner: job {event['job']} ({name}) finished in {wall:,.0f} s\n{counts}\n"
            f"results: {event.get('results') or 'in the checkpoint'} on {event['host']}"
        )
    if event["event"] == "stopped":
        return (
            f"runner: job {event['job']} ({name}) stopped ({event['reason']}) on {where}\n"
            f"{counts}\n{event['message']}\nnext: {event['next']}"
        )
    w = event["window"]
    return (
        f"runner: job {event['job']} ({name}) is failing more rows: {w['failed']:,} of the "
        f"last {w['rows']:,} ({w['share']:.0%}, was {w['share_before']:.0%}) on {where}\n"
        f"{counts}\nsee: {event['next']}"
    )
