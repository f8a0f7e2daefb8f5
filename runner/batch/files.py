"""Batch mode's files: the spec split into Batch-API JSONL inputs, and result lines merged back.

Both halves are plain, synchronous functions (the job runs them in a worker thread):
`plan_files` streams the spec once and writes each row that the Batch API can run into a
file for its (endpoint, model), within the platform's limits (API-NOTES 5.1: at most
50,000 lines and 100 MB per file, one model per file, 10,000 lines for embeddings); each
file is committed to the checkpoint together with the rows it carries, so a resume plans
only rows that no file holds yet. `merge_file` turns output and error lines into the same
row outcomes online mode records, priced at the batch discount.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import IO, Any

import orjson

from ..cost import PriceTable, Usage
from ..endpoints import Parsed, error_fields, parse_success
from ..errors import RequestFailed, RowError, Verdict, classify
from ..outcome import Outcome, invalid_outcome, outcome_for
from ..settings import Settings
from ..spec import InvalidRow, Request, read_spec
from ..store import Store

__all__ = [
    "BATCH_ENDPOINTS",
    "MAX_EMBEDDING_LINES",
    "MAX_FILE_BYTES",
    "MAX_LINES",
    "Plan",
    "batch_cost",
    "merge_file",
    "missing_outcome",
    "plan_files",
    "retry_online",
]

# Endpoint kinds the Batch API runs (API-NOTES 5.1); other rows stay for online mode.
BATCH_ENDPOINTS = frozenset({"chat/completions", "embeddings", "images/generations"})
MAX_LINES = 50_000
MAX_EMBEDDING_LINES = 10_000
MAX_FILE_BYTES = 100 * 1024 * 1024
_RECORD_CHUNK = 2_000


@dataclass
class Plan:
    """What planning did: files written, invalid rows failed, rows left for online mode."""

    files: int = 0
    rows: int = 0
    invalid: int = 0
    not_batchable: int = 0
    endpoints: set[str] = field(default_factory=set)


@dataclass
class _Open:
    key: int
    endpoint: str
    model: str
    path: Path
    fh: IO[bytes]
    lines: int = 0
    size: int = 0
    worst: int = 0
    members: list[tuple[int, str, int]] = field(default_factory=list)


def batch_cost(prices: PriceTable, model: str, usage: Usage) -> int | None:
    """The online price of `usage` times the batch discount, rounded to the nano-unit."""
    online = prices.cost(model, usage)
    if online is None:
        return None
    return int((Decimal(online) * prices.batch_factor).to_integral_value(ROUND_HALF_EVEN))


def _worst(prices: PriceTable, req: Request, line_bytes: int) -> int:
    """The most a line could cost, as online mode reckons it, at the batch discount."""
    online = prices.worst_case(req.model, req.body, line_bytes)
    return int(Decimal(online) * prices.batch_factor)


def _bits(seqs: Iterator[int], total: int) -> bytearray:
    bits = bytearray((max(total, 0) + 8) // 8)
    for seq in seqs:
        if seq < total:
            bits[seq >> 3] |= 1 << (seq & 7)
    return bits


def plan_files(
    settings: Settings, store: Store, prices: PriceTable, total: int, folder: Path
) -> Plan:
    """Write and commit batch input files for every row no file holds yet."""
    folder.mkdir(parents=True, exist_ok=True)
    done = store.done_bitmap(total)
    held = _bits(store.batched_seqs(), total)
    prefix = settings.provider_info.batch_url_prefix
    key = max((int(b["key"]) for b in store.batches()), default=0)
    defaults = settings.spec_defaults()
    plan = Plan()
    groups: dict[tuple[str, str], _Open] = {}
    invalid: list[Outcome] = []

    def close(g: _Open) -> None:
        g.fh.flush()
        os.fsync(g.fh.fileno())
        g.fh.close()
        now = time.time()
        record = {
            "key": g.key,
            "endpoint": g.endpoint,
            "model": g.model,
            "path": str(g.path),
            "lines": g.lines,
            "bytes": g.size,
            "worst_nano": g.worst,
            "state": "planned",
            "created_at": now,
            "updated_at": now,
        }
        store.plan_batch(record, g.members)
        plan.files += 1

    try:
        for chunk in read_spec(settings.spec, defaults):
            for item in chunk:
                seq = item.seq
                bit = 1 << (seq & 7)
                if seq < total and (done[seq >> 3] & bit or held[seq >> 3] & bit):
                    continue
                if isinstance(item, InvalidRow):
                    invalid.append(invalid_outcome(item))
                    continue
                if item.endpoint not in BATCH_ENDPOINTS:
                    plan.not_batchable += 1
                    plan.endpoints.add(item.endpoint)
                    continue
                line = (
                    orjson.dumps(
                        {
                            "custom_id": item.custom_id,
                            "method": "POST",
                            "url": prefix + item.endpoint,
                            "body": item.body,
                        }
                    )
                    + b"\n"
                )
                cap = MAX_EMBEDDING_LINES if item.endpoint == "embeddings" else MAX_LINES
                cap = min(cap, max(1, settings.batch_lines))
                g = groups.get((item.endpoint, item.model))
                if g is not None and (g.lines >= cap or g.size + len(line) > MAX_FILE_BYTES):
                    close(groups.pop((item.endpoint, item.model)))
                    g = None
                if g is None:
                    key += 1
                    path = folder / f"input-{key:05d}.jsonl"
                    g = _Open(key, item.endpoint, item.model, path, path.open("wb"))
                    groups[(item.endpoint, item.model)] = g
                g.fh.write(line)
                g.lines += 1
                g.size += len(line)
                g.worst += _worst(prices, item, len(line))
                g.members.append((seq, item.custom_id, item.line))
                plan.rows += 1
            if len(invalid) >= _RECORD_CHUNK:
                store.record(invalid)
                plan.invalid += len(invalid)
                invalid.clear()
        for g in list(groups.values()):
            close(g)
        groups.clear()
    finally:
        for g in groups.values():  # an error mid-way: those files were never committed
            g.fh.close()
    if invalid:
        store.record(invalid)
        plan.invalid += len(invalid)
    return plan


def _outcome(
    seq: int,
    line_no: int,
    custom_id: str,
    batch: dict[str, Any],
    status: str,
    *,
    error: RequestFailed | None = None,
    parsed: Parsed | None = None,
    cost_nano: int | None = None,
    request_id: str | None = None,
) -> Outcome:
    """A row's outcome from its batch: sent when the batch was created, task id the batch's."""
    now = time.time()
    req = Request(seq, line_no, custom_id, batch["endpoint"], batch["model"], {})
    return outcome_for(
        req, status, attempts=1, started=float(batch.get("created_at") or now), finished=now,
        http_status=200 if parsed is not None else error.status if error else None,
        error=error, parsed=parsed,
        cost_nano=cost_nano, request_id=request_id, task_id=batch.get("batch_id"),
        task_status=batch.get("status"),
    )  # fmt: skip


def _line_outcome(
    raw: bytes,
    members: dict[str, tuple[int, int]],
    batch: dict[str, Any],
    prices: PriceTable,
    settings: Settings,
) -> Outcome | None:
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(line, dict) or line.get("custom_id") not in members:
        return None
    cid = str(line["custom_id"])
    seq, line_no = members[cid]
    response = line.get("response")
    if not isinstance(response, dict):
        response = {}
    status_code = response.get("status_code")
    body = response.get("body")
    status = status_code if isinstance(status_code, int) else 0
    if status == 200 and isinstance(body, dict) and "error" not in body:
        text = orjson.dumps(body)
        parsed = parse_success(batch["endpoint"], text, body, settings.keep_response)
        return _outcome(
            seq,
            line_no,
            cid,
            batch,
            "failed" if parsed.failure else "succeeded",
            error=parsed.failure,
            parsed=parsed,
            cost_nano=batch_cost(prices, batch["model"], parsed.usage),
            request_id=body.get("request_id"),
        )
    # An error line: the shape is not documented (API-NOTES 5.4), so read the response
    # body first and a top-level `error` object second.
    code, message = error_fields(body)
    if code is None and not message:
        code, message = error_fields({"error": line.get("error")})
    error = RowError(
        message or f"the batch answered HTTP {status}",
        code=code or (str(status) if status else "batch_error"),
        status=status or None,
    )
    return _outcome(seq, line_no, cid, batch, "failed", error=error)


def missing_outcome(
    seq: int, line_no: int, custom_id: str, batch: dict[str, Any], message: str
) -> Outcome:
    """A row the finished batch did not answer (expired, cancelled, failed, or dropped)."""
    code = "batch_" + str(batch.get("status") or "missing")
    if batch.get("status") == "completed":
        code = "batch_missing"
    return _outcome(seq, line_no, custom_id, batch, "failed", error=RowError(message, code=code))


def merge_file(
    path: Path | None,
    members: dict[str, tuple[int, int]],
    batch: dict[str, Any],
    prices: PriceTable,
    settings: Settings,
    seen: set[str],
) -> Iterator[list[Outcome]]:
    """Outcomes of one downloaded result file, in chunks; `seen` collects answered ids."""
    if path is None:
        return
    chunk: list[Outcome] = []
    with path.open("rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            out = _line_outcome(raw, members, batch, prices, settings)
            if out is None or out.custom_id in seen:
                continue
            seen.add(out.custom_id)
            chunk.append(out)
            if len(chunk) >= _RECORD_CHUNK:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def retry_online(store: Store, settings: Settings) -> list[int]:
    """Seqs of batch-failed rows worth sending online: every failure except those the
    platform pinned on the row itself (a bad parameter or the content filter would fail the
    same way online)."""
    info = settings.provider_info
    seqs = []
    for seq, code, status in store.batch_failures():
        if code and code.startswith("batch_"):
            seqs.append(seq)
            continue
        verdict = classify(
            status or 0, code, balance_statuses=info.balance_statuses, shape=info.error_shape
        )
        if verdict is not Verdict.FAIL_ROW:
            seqs.append(seq)
    return seqs
