"""What `runner report` shows, read from a job's checkpoint without disturbing its writer.

The checkpoint is opened read-only (`mode=ro`) and read in one transaction: in WAL mode a
reader sees one consistent snapshot and never blocks the runner's commits, so a report of
a job still running shows where it stood at that instant. Series are bucketed so that no
chart gets more than `MAX_POINTS` points, whatever the job's length (a day at one point a
second would make a page of megabytes for no visible gain).
"""

from __future__ import annotations

import math
import shlex
import sqlite3
import time
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from ..agents import ASYNC_AGENTS
from ..errors import CheckpointError, UsageError
from ..settings import Settings
from ..spec import ASYNC_ENDPOINTS
from ..store.totals import NO_MODEL
from . import timeline
from .sketch import LatencySketch

__all__ = ["LIVE_SECONDS", "MAX_POINTS", "load_report", "percentile"]

MAX_POINTS = 1200
LATENCY_POINTS = 120  # percentiles need enough rows per bucket to mean something
LIVE_SECONDS = 10.0  # a timeline row this recent means the job is still running
EXAMPLE_IDS = 5
# Rows that are async tasks: the async endpoints, and agent rows of an async agent.
_ASYNC_SQL = (
    f"COALESCE(endpoint, '') IN ({', '.join('?' for _ in ASYNC_ENDPOINTS)}) OR "
    f"(endpoint = 'agents' AND model IN ({', '.join('?' for _ in ASYNC_AGENTS)}))"
)
_ASYNC_ARGS = [*sorted(ASYNC_ENDPOINTS), *sorted(ASYNC_AGENTS)]


def percentile(sorted_values: Any, q: float) -> float | None:
    """The nearest-rank percentile of an already sorted sequence."""
    n = len(sorted_values)
    if n == 0:
        return None
    return float(sorted_values[min(n - 1, max(0, math.ceil(q / 100 * n) - 1))])


def open_readonly(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}: is this the --out folder of a job run by `runner run`?"
        )
    conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, timeout=5.0)
    conn.row_factory = sqlite3.Row
    return conn


def load_report(checkpoint: Path, *, now: float | None = None) -> dict[str, Any]:
    """Everything the page shows, as plain JSON-able data (the figures and the series)."""
    conn = open_readonly(checkpoint)
    try:
        conn.execute("BEGIN")  # one snapshot for every query below
        return _load(conn, time.time() if now is None else now)
    except sqlite3.DatabaseError as exc:
        raise CheckpointError(f"cannot read checkpoint {checkpoint}: {exc}") from exc
    finally:
        conn.close()


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _load(conn: sqlite3.Connection, now: float) -> dict[str, Any]:
    tables = _tables(conn)
    if "job" not in tables or "rows" not in tables:
        raise UsageError("the checkpoint holds no job yet")
    job = conn.execute("SELECT * FROM job WHERE key = 'job'").fetchone()
    if job is None:
        raise UsageError("the checkpoint holds no job yet")
    settings = orjson.loads(job["settings"]) if job["settings"] else {}
    runs = (
        [dict(r) for r in conn.execute("SELECT * FROM runs ORDER BY id")]
        if "runs" in tables
        else []
    )
    tl = _timeline_rows(conn) if timeline.TABLE in tables else []
    span = _span(conn, runs, tl, now)
    live = bool(tl and runs) and now - tl[-1]["t"] < LIVE_SECONDS
    live = live and runs[-1]["outcome"] == "running"
    out: dict[str, Any] = {
        "job": {
            "spec": job["spec_path"],
            "job_id": settings.get("job_id"),
            "provider": settings.get("provider") or "zai",
            "providers_file": settings.get("providers_file"),
            "prices": settings.get("prices"),
            "mode": settings.get("mode", "online"),
            "tier": settings.get("tier"),
            "concurrency": settings.get("concurrency"),
            "results_to": settings.get("results_to"),
            "created_at": job["created_at"],
        },
        "generated_at": now,
        "live": live,
        "runs": [
            {k: r[k] for k in ("id", "started_at", "ended_at", "outcome", "sent", "retries")}
            for r in runs
        ],
        "summary": _summary(conn, int(job["total_rows"] or 0), "attempts" in tables),
        "errors": _errors(conn, settings.get("out")),
        "truncated": _truncated(conn, settings.get("out")),
        "span": span,
    }
    lat = _latencies(conn, span)
    out["latency"] = lat
    out["timeline"] = _bucket_timeline(tl, span)
    out["throughput"] = _throughput(conn, span)
    models = [
        m["model"] for m in out["summary"]["by_model"] if m["model"] != NO_MODEL and m["sent"]
    ]
    out["tier"] = _tier(tl, lat, out["throughput"], settings, models)
    out["tasks"] = _tasks(conn)
    out["batches"] = _batches(conn) if "batches" in tables else []
    return out


def _timeline_rows(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(f"SELECT * FROM {timeline.TABLE} ORDER BY t, run")]


def _span(
    conn: sqlite3.Connection, runs: list[dict[str, Any]], tl: list[dict[str, Any]], now: float
) -> dict[str, Any]:
    """The job's wall-clock window, its running time, and the bucket width for the charts."""
    first, last = conn.execute(
        "SELECT MIN(started_at), MAX(finished_at) FROM rows WHERE attempts > 0"
    ).fetchone()
    starts = [r["started_at"] for r in runs if r["started_at"]]
    ends = [r["ended_at"] for r in runs if r["ended_at"]]
    t0 = min([x for x in [first, *starts] if x is not None], default=now)
    t1 = max(
        [x for x in [last, *ends, (tl[-1]["t"] + 1) if tl else None] if x is not None],
        default=t0,
    )
    t1 = max(t1, t0 + 1)
    running = 0.0
    for r in runs:
        end = r["ended_at"]
        if end is None:  # still running, or killed: its last timeline second tells
            seconds = [x["t"] + 1 for x in tl if x["run"] == r["id"]]
            end = max(seconds, default=r["started_at"])
        running += max(0.0, end - r["started_at"])
    width = max(1, math.ceil((t1 - t0) / MAX_POINTS))
    return {"start": t0, "end": t1, "running_s": running, "bucket_s": width}


def _summary(conn: sqlite3.Connection, total: int, retried: bool) -> dict[str, Any]:
    counts: dict[str, int] = defaultdict(int)
    for status, n in conn.execute("SELECT status, COUNT(*) FROM rows GROUP BY status"):
        counts[status] = int(n)
    by_model = [
        dict(r)
        for r in conn.execute(
            "SELECT COALESCE(model, ?) AS model, COUNT(*) AS rows, "
            "SUM(status = 'succeeded') AS succeeded, SUM(status = 'failed') AS failed, "
            "COALESCE(SUM(cost_nano), 0) AS cost_nano, "
            "COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens, "
            "COALESCE(SUM(completion_tokens), 0) AS completion_tokens, "
            "SUM(cost_nano IS NULL AND status = 'succeeded') AS unpriced, "
            "SUM(attempts > 0) AS sent "
            "FROM rows GROUP BY model ORDER BY SUM(cost_nano) DESC, model",
            [NO_MODEL],
        )
    ]
    if retried:
        _add_attempts(conn, by_model)
    terminal = counts["succeeded"] + counts["failed"]
    return {
        "total": total,
        "succeeded": counts["succeeded"],
        "failed": counts["failed"],
        "in_progress": counts["submitted"] + counts["submitting"],
        "pending": max(total - terminal, 0),
        "cost_nano": sum(int(m["cost_nano"]) for m in by_model),
        "unpriced": sum(int(m["unpriced"] or 0) for m in by_model),
        "by_model": by_model,
    }


def _add_attempts(conn: sqlite3.Connection, by_model: list[dict[str, Any]]) -> None:
    """Outcomes a retry superseded were billed all the same: their cost and tokens join
    their model's (a model only earlier attempts used gets a line of its own)."""
    lines = {m["model"]: m for m in by_model}
    for model, n, cost, prompt, completion in conn.execute(
        "SELECT COALESCE(model, ?), COUNT(*), COALESCE(SUM(cost_nano), 0), "
        "COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0) "
        "FROM attempts GROUP BY model",
        [NO_MODEL],
    ):
        m = lines.get(model)
        if m is None:
            m = lines[model] = {"model": model, "rows": 0, "succeeded": 0, "failed": 0,
                                "cost_nano": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                "unpriced": 0, "sent": 0}  # fmt: skip
            by_model.append(m)
        m["superseded"] = int(n)
        m["cost_nano"] += int(cost)
        m["prompt_tokens"] += int(prompt)
        m["completion_tokens"] += int(completion)


def _errors(conn: sqlite3.Connection, out: str | None) -> list[dict[str, Any]]:
    errors = []
    for code, message, n in conn.execute(
        "SELECT error_code, MIN(error_message), COUNT(*) FROM rows WHERE status = 'failed' "
        "GROUP BY error_code ORDER BY COUNT(*) DESC LIMIT 30"
    ):
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT custom_id FROM rows WHERE status = 'failed' AND error_code IS ? "
                "ORDER BY seq LIMIT ?",
                [code, EXAMPLE_IDS],
            )
        ]
        errors.append(
            {
                "code": code,
                "message": message,
                "rows": int(n),
                "examples": ids,
                "retry": retry_command(out, code),
            }
        )
    return errors


def retry_command(out: str | None, code: str | None) -> str | None:
    """The `runner retry` that resends one group of failed rows; None where resending
    cannot help (an invalid row fails the same way) or may pay twice (submit_unknown)."""
    if code in (None, "invalid_row", "submit_unknown"):
        return None
    return f"runner retry {shlex.quote(out or 'OUT')} --code {shlex.quote(str(code))}"


def _truncated(conn: sqlite3.Connection, out: str | None) -> dict[str, Any]:
    """Answers cut at max_tokens: succeeded, yet likely unusable, so a group of their own.
    The count is the checkpoint's kept totals where it has them (no scan of the answers);
    the example ids are looked for only when there are some."""
    where = (
        "status = 'succeeded' AND instr(response, '\"length\"') > 0 AND json_valid(response) "
        "AND json_extract(response, '$.choices[0].finish_reason') = 'length'"
    )
    if "totals" in _tables(conn):
        n = conn.execute("SELECT COALESCE(SUM(truncated), 0) FROM totals WHERE kind = 'row'")
    else:
        n = conn.execute(f"SELECT COUNT(*) FROM rows WHERE {where}")
    count = int(n.fetchone()[0])
    ids = (
        [
            r[0]
            for r in conn.execute(
                f"SELECT custom_id FROM rows WHERE {where} ORDER BY seq LIMIT ?", [EXAMPLE_IDS]
            )
        ]
        if count
        else []
    )
    return {
        "rows": count,
        "examples": ids,
        "retry": f"runner retry {shlex.quote(out or 'OUT')} --finish-reason length "
        "--set body.max_tokens=N",
    }


def _buckets(span: dict[str, Any], width: float | None = None) -> tuple[float, float, int]:
    w = float(width or span["bucket_s"])
    t0 = math.floor(span["start"] / w) * w
    return t0, w, max(1, math.ceil((span["end"] - t0) / w))


def _bucket_timeline(tl: list[dict[str, Any]], span: dict[str, Any]) -> dict[str, Any]:
    """Per-bucket rates (per second) and gauges; None where no run was recording."""
    t0, w, n = _buckets(span)
    sums = ("sent", "done", "rate_limited", "retries")
    acc = {k: [0.0] * n for k in (*sums, "in_flight", "cap", "in_flight_max")}
    seen = [0] * n
    for row in tl:
        i = min(n - 1, int((row["t"] - t0) // w))
        seen[i] += 1
        for k in sums:
            acc[k][i] += row[k] or 0
        acc["in_flight"][i] += row["in_flight"] or 0
        acc["cap"][i] = max(acc["cap"][i], row["cap"] or 0)
        acc["in_flight_max"][i] = max(acc["in_flight_max"][i], row["in_flight_max"] or 0)
    series: dict[str, Any] = {"t": [t0 + i * w for i in range(n)]}
    for k, values in acc.items():
        if k in sums:
            series[k] = [round(v / w, 3) if seen[i] else None for i, v in enumerate(values)]
        elif k == "in_flight":
            series[k] = [round(v / seen[i], 2) if seen[i] else None for i, v in enumerate(values)]
        else:
            series[k] = [v if seen[i] else None for i, v in enumerate(values)]
    series["recorded"] = bool(tl)
    series["totals"] = {k: int(sum(r[k] or 0 for r in tl)) for k in sums}
    return series


def _throughput(conn: sqlite3.Connection, span: dict[str, Any]) -> dict[str, Any]:
    """Rows answered per second and cumulative cost per model, from the rows themselves."""
    t0, w, n = _buckets(span)
    done, failed = [0.0] * n, [0.0] * n
    cost: dict[str, list[float]] = {}
    for b, model, rows, fails, nano in conn.execute(
        "SELECT CAST((finished_at - ?) / ? AS INTEGER) AS b, COALESCE(model, ?), "
        "COUNT(*), SUM(status = 'failed'), COALESCE(SUM(cost_nano), 0) FROM rows "
        "WHERE status IN ('succeeded', 'failed') AND finished_at IS NOT NULL "
        "GROUP BY b, model",
        [t0, w, NO_MODEL],
    ):
        i = min(n - 1, max(0, int(b)))
        done[i] += rows
        failed[i] += fails or 0
        cost.setdefault(model, [0.0] * n)[i] += nano
    cumulative = {}
    for model, per in cost.items():
        running, line = 0.0, []
        for v in per:
            running += v
            line.append(running / 1e9)
        if running:
            cumulative[model] = line
    return {
        "t": [t0 + i * w for i in range(n)],
        "done": [round(v / w, 3) for v in done],
        "failed": [round(v / w, 3) for v in failed],
        "cost": cumulative,
    }


def _latencies(conn: sqlite3.Connection, span: dict[str, Any]) -> dict[str, Any]:
    """Percentiles over time and a log-binned histogram of synchronous rows' latency."""
    width = max(1.0, math.ceil((span["end"] - span["start"]) / LATENCY_POINTS))
    t0, w, n = _buckets(span, width)
    per = [LatencySketch() for _ in range(n)]
    every = LatencySketch()
    first = LatencySketch()  # answered at the first attempt: the platform's own latency
    for finished, latency, attempts in conn.execute(
        "SELECT finished_at, latency_s, attempts FROM rows WHERE status IN "
        "('succeeded', 'failed') AND attempts > 0 AND latency_s IS NOT NULL "
        f"AND finished_at IS NOT NULL AND NOT ({_ASYNC_SQL})",
        _ASYNC_ARGS,
    ):
        per[min(n - 1, max(0, int((finished - t0) // w)))].add(latency)
        every.add(latency)
        if attempts == 1:
            first.add(latency)
    qs = (50, 90, 99)
    over_time: dict[str, list[float | None]] = {f"p{q}": [] for q in qs}
    for sketch in per:
        for q in qs:
            p = sketch.percentile(q)
            over_time[f"p{q}"].append(None if p is None else round(p, 4))
    return {
        "count": every.count,
        **{f"p{q}": every.percentile(q) for q in qs},
        "first_attempt_p50": first.percentile(50),
        "t": [t0 + i * w for i in range(n)],
        "series": over_time,
        "histogram": every.histogram(),
    }


def _configured_cap(settings: dict[str, Any], models: list[str]) -> int:
    """The job's tier: the sum of its models' caps, as the settings it ran with set them."""
    try:
        job = Settings.from_record(settings)
        return sum(job.cap_for(m) for m in models)
    except (UsageError, TypeError, KeyError, ValueError):
        return 0  # an older or foreign record: fall back to the limit the timeline saw


def _tier(
    tl: list[dict[str, Any]],
    lat: dict[str, Any],
    thr: dict[str, Any],
    settings: dict[str, Any],
    models: list[str],
) -> dict[str, Any]:
    """How much of the tier the job used: C in flight of the cap, and rows/s of ideal C/L."""
    cap = _configured_cap(settings, models) or max((r["cap"] or 0 for r in tl), default=0)
    busy = [r for r in tl if (r["in_flight_max"] or 0) > 0]
    mean_in_flight = sum(r["in_flight"] or 0 for r in busy) / len(busy) if busy else None
    latency = lat["first_attempt_p50"] or lat["p50"]
    ideal = cap / latency if cap and latency else None
    rates = sorted(v for v in thr["done"] if v)
    achieved = percentile(rates, 50) if rates else None
    return {
        "cap": cap or None,
        "typical_latency_s": latency,
        "ideal_rps": ideal,
        "median_rps": achieved,
        "mean_in_flight": mean_in_flight,
        "share": (mean_in_flight / cap) if cap and mean_in_flight is not None else None,
        "peak_in_flight": max((r["in_flight_max"] or 0 for r in tl), default=None),
    }


def _tasks(conn: sqlite3.Connection) -> dict[str, Any]:
    """Async tasks: submit to done (latency_s covers the submit and every poll)."""
    sketch = LatencySketch()
    for (latency,) in conn.execute(
        f"SELECT latency_s FROM rows WHERE ({_ASYNC_SQL}) "
        "AND status IN ('succeeded', 'failed') AND latency_s IS NOT NULL",
        _ASYNC_ARGS,
    ):
        sketch.add(float(latency))
    (open_,) = conn.execute(
        f"SELECT COUNT(*) FROM rows WHERE ({_ASYNC_SQL}) AND status IN ('submitting', 'submitted')",
        _ASYNC_ARGS,
    ).fetchone()
    return {
        "count": sketch.count,
        "open": int(open_),
        "p50": sketch.percentile(50),
        "p90": sketch.percentile(90),
        "max": sketch.max if sketch.count else None,
        "histogram": sketch.histogram(),
    }


def _batches(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    out = []
    for r in conn.execute(
        "SELECT key, model, endpoint, lines, state, status, batch_id, request_counts, "
        "message, created_at, updated_at FROM batches ORDER BY key"
    ):
        b = dict(r)
        try:
            b["request_counts"] = orjson.loads(b["request_counts"] or "null")
        except orjson.JSONDecodeError:
            b["request_counts"] = None
        out.append(b)
    return out
