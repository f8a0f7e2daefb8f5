"""`runner retry`: which finished rows of a job to send again, and making them pending.

A retry is a new run of the same job: the chosen rows' outcomes move to the checkpoint's
`attempts` table (`Store.archive`, one transaction), which leaves exactly those rows without
a result, and the ordinary resume sends them. Overrides (`--set body.max_tokens=2048`,
`--model M`) travel in the job's settings (`Settings.overrides`), so a retry stopped by a
signal or a kill -9 continues with the same ones under `runner resume`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import UsageError
from .store import Store

__all__ = ["Selection", "choose", "parse_lines", "parse_override", "read_ids"]

# An async row whose submission is in doubt: the platform may hold (and bill) its task.
_UNKNOWN = "submit_unknown"


@dataclass(frozen=True)
class Selection:
    """What `runner retry` picks; every given criterion must hold (they combine with AND)."""

    statuses: frozenset[str] = frozenset()
    codes: frozenset[str] = frozenset()
    finish_reason: str | None = None
    lines: frozenset[int] = frozenset()
    ids: frozenset[str] = frozenset()
    resubmit_unknown: bool = False

    def effective_statuses(self) -> frozenset[str]:
        # Succeeded rows are sent again only when asked for by status, line or id, or as
        # truncated answers (--finish-reason): by default a retry is of failed rows.
        if self.statuses:
            return self.statuses
        if self.finish_reason is not None or self.lines or self.ids:
            return frozenset({"succeeded", "failed"})
        return frozenset({"failed"})


def choose(store: Store, sel: Selection) -> tuple[list[int], Counter[str]]:
    """The seqs of the rows `sel` picks, and how many for each reason (status or code)."""
    statuses = sel.effective_statuses()
    seqs: list[int] = []
    reasons: Counter[str] = Counter()
    skipped_unknown = 0
    for seq, line, cid, status, code, finish in store.finished_rows():
        if status not in statuses:
            continue
        if sel.codes and str(code) not in sel.codes:
            continue
        if sel.finish_reason is not None and finish != sel.finish_reason:
            continue
        if sel.lines and line not in sel.lines:
            continue
        if sel.ids and cid not in sel.ids:
            continue
        if code == _UNKNOWN and not sel.resubmit_unknown:
            skipped_unknown += 1
            continue
        seqs.append(int(seq))
        if finish == "length" and status == "succeeded":
            reasons["finish_reason length"] += 1
        else:
            reasons[f"{status} {code}" if code else str(status)] += 1
    if skipped_unknown:
        reasons[f"left out: {_UNKNOWN} (pass --resubmit-unknown)"] = skipped_unknown
    return seqs, reasons


def parse_lines(text: str) -> frozenset[int]:
    """`3,17-40` -> the spec lines 3 and 17..40."""
    lines: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise UsageError(f"--rows: {part!r} is not a line or a range like 17-40") from None
        if first < 1 or last < first:
            raise UsageError(f"--rows: {part!r} is not a range of spec lines (from 1)")
        lines.update(range(first, last + 1))
    return frozenset(lines)


def parse_override(text: str) -> tuple[str, Any]:
    """`body.max_tokens=4096` -> ("body.max_tokens", 4096); the value is JSON, or a string."""
    path, eq, raw = text.partition("=")
    path = path.strip()
    parts = path.split(".")
    if not eq or parts[0] != "body" or len(parts) < 2 or not all(parts):
        raise UsageError(f"--set {text!r}: write PATH=VALUE with PATH like body.max_tokens")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = raw  # a bare word: `--set body.model=glm-4.5` means the string
    return path, value


def read_ids(lines: Iterable[str]) -> frozenset[str]:
    return frozenset(s for s in (line.strip() for line in lines) if s)
