"""A row's outcome: the one record every mode builds and the checkpoint stores.

Online rows, async tasks, batch result lines and invalid spec rows all end as an `Outcome`,
built by `outcome_for` (or `invalid_outcome`), so a column means the same thing whichever
path wrote it. Its fields are the checkpoint's `rows` columns (`COLUMNS`), in order.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .endpoints import Parsed
    from .errors import RequestFailed
    from .spec import InvalidRow, Request

__all__ = ["COLUMNS", "Outcome", "invalid_outcome", "outcome_for"]


@dataclass(slots=True, kw_only=True)
class Outcome:
    seq: int
    custom_id: str
    line: int | None = None
    endpoint: str | None = None
    model: str | None = None
    status: str
    attempts: int | None = None
    http_status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    request_id: str | None = None
    request_fingerprint: str | None = None
    task_id: str | None = None
    task_status: str | None = None
    response: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    total_tokens: int | None = None
    images: int | None = None
    videos: int | None = None
    cost_nano: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    latency_s: float | None = None
    artifacts: str | None = None
    # Which key sent the row: its fingerprint (keys.py), never the key.
    key_fp: str | None = None

    @classmethod
    def from_stored(cls, row: Mapping[str, Any]) -> Outcome:
        """A checkpoint row read back, to be recorded again with some fields changed."""
        values: dict[str, Any] = {name: row.get(name) for name in COLUMNS}
        return cls(**values)


_SQL_TYPES = {"int": int, "str": str, "float": float}
# The checkpoint's `rows` table: one column per field, typed as the field is.
COLUMNS: dict[str, type] = {f.name: _SQL_TYPES[str(f.type).split(" ")[0]] for f in fields(Outcome)}


def outcome_for(
    req: Request,
    status: str,
    *,
    attempts: int,
    started: float,
    finished: float | None = None,
    http_status: int | None = None,
    error: RequestFailed | None = None,
    parsed: Parsed | None = None,
    cost_nano: int | None = None,
    request_fp: str | None = None,
    request_id: str | None = None,
    task_id: str | None = None,
    task_status: str | None = None,
    artifacts: str | None = None,
    key_fp: str | None = None,
) -> Outcome:
    """The outcome of a row that was sent (or, for a batch, handed to the platform)."""
    finished = time.time() if finished is None else finished
    u = parsed.usage if parsed is not None else None
    return Outcome(
        seq=req.seq,
        custom_id=req.custom_id,
        line=req.line,
        endpoint=req.endpoint,
        model=req.model,
        status=status,
        attempts=attempts,
        http_status=http_status,
        error_code=error.code if error else None,
        error_message=error.message if error else None,
        request_id=request_id,
        request_fingerprint=request_fp,
        task_id=task_id,
        task_status=task_status,
        response=parsed.text if parsed is not None else None,
        prompt_tokens=u.prompt_tokens if u else None,
        completion_tokens=u.completion_tokens if u else None,
        cached_tokens=u.cached_tokens if u else None,
        total_tokens=u.total_tokens if u else None,
        images=u.images if u else None,
        videos=u.videos if u else None,
        cost_nano=cost_nano,
        started_at=started,
        finished_at=finished,
        latency_s=round(finished - started, 6),
        artifacts=artifacts,
        key_fp=key_fp,
    )


def invalid_outcome(err: InvalidRow) -> Outcome:
    """A spec row that can't be sent: failed with its line-numbered reason, never sent."""
    now = time.time()
    return Outcome(
        seq=err.seq,
        custom_id=err.custom_id or f"line-{err.line}",
        line=err.line,
        status="failed",
        attempts=0,
        error_code=err.code,
        error_message=str(err),
        started_at=now,
        finished_at=now,
        latency_s=0.0,
    )
