"""The read side of a checkpoint: counts, tokens and cost per model and per key, failed rows
grouped by cause, and the runs so far (what `runner status` prints and the tests reconcile)."""

from __future__ import annotations

import heapq
import re
from typing import Any

import sqlite_utils

from .batches import OPEN_BATCH_SQL

__all__ = ["NO_MODEL", "Totals", "message_shape"]

# The model column of rows that failed validation before naming a model.
NO_MODEL = "(invalid rows: no model)"

_SHAPE = re.compile(r"'[^']*'|\"[^\"]*\"|\d+")


def message_shape(message: str | None) -> str:
    """An error message with what varies per row masked: `line 5: ... 'x'` -> `line #: ... #`."""
    return _SHAPE.sub("#", message or "")


class _FirstLines:
    """SQLite aggregate: the first few line numbers of a group, as "2,9,14"."""

    KEEP = 5

    def __init__(self) -> None:
        self.lines: list[int] = []

    def step(self, line: int | None) -> None:
        if line is not None:
            heapq.heappush(self.lines, -line)
            if len(self.lines) > self.KEEP:
                heapq.heappop(self.lines)

    def finalize(self) -> str:
        return ",".join(str(x) for x in sorted(-n for n in self.lines))


class Totals:
    """Mixed into `Store`: the totals read over its connection."""

    db: sqlite_utils.Database

    def job(self) -> dict[str, Any] | None:
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        """Counts and cost: what `runner status` prints and what the tests reconcile."""
        job = self.job()
        total = int(job["total_rows"]) if job and job["total_rows"] is not None else 0
        counts = dict.fromkeys(("succeeded", "failed", "submitted", "submitting"), 0)
        for status, n in self.db.execute("SELECT status, COUNT(*) FROM rows GROUP BY status"):
            counts[status] = int(n)
        by_model: dict[str, dict[str, Any]] = {}
        tot = dict.fromkeys(
            ("cost_nano", "prompt_tokens", "completion_tokens", "cached_tokens", "total_tokens"), 0
        )
        for row in self.db.query(
            "SELECT model, COUNT(*) AS rows, SUM(status = 'succeeded') AS succeeded, "
            "SUM(status = 'failed') AS failed, COALESCE(SUM(cost_nano), 0) AS cost_nano, "
            "COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens, "
            "COALESCE(SUM(completion_tokens), 0) AS completion_tokens, "
            "COALESCE(SUM(cached_tokens), 0) AS cached_tokens, "
            "COALESCE(SUM(total_tokens), 0) AS total_tokens, "
            "COALESCE(SUM(images), 0) AS images, COALESCE(SUM(videos), 0) AS videos, "
            "SUM(cost_nano IS NULL AND status = 'succeeded') AS unpriced "
            "FROM rows GROUP BY model ORDER BY model"
        ):
            m = dict(row)
            for k in tot:
                tot[k] += int(m[k] or 0)
            # Rows that failed validation before naming a model are no model's rows.
            by_model[m.pop("model") or NO_MODEL] = m
        # Superseded attempts (`runner retry`) were billed too: cost and tokens keep them.
        if "attempts" in self.db.table_names():
            for row in self.db.query(
                "SELECT model, "
                + ", ".join(f"COALESCE(SUM({k}), 0) AS {k}" for k in (*tot, "images", "videos"))
                + " FROM attempts GROUP BY model"
            ):
                m = dict(row)
                entry = by_model.setdefault(
                    m.pop("model") or NO_MODEL,
                    dict.fromkeys(("rows", "succeeded", "failed", "unpriced", *m), 0),
                )
                for k, v in m.items():
                    entry[k] = int(entry.get(k) or 0) + int(v)
                    if k in tot:
                        tot[k] += int(v)
        error_codes = {
            str(code): int(n)
            for code, n in self.db.execute(
                "SELECT error_code, COUNT(*) FROM rows WHERE status = 'failed' "
                "GROUP BY error_code ORDER BY COUNT(*) DESC"
            )
        }
        terminal = counts["succeeded"] + counts["failed"]
        in_batches = int(self.db.execute(OPEN_BATCH_SQL.format(cols="COUNT(*)")).fetchone()[0] or 0)
        by_key = self._by_key()
        return {
            "total": total,
            "succeeded": counts["succeeded"],
            "failed": counts["failed"],
            "in_progress": counts["submitted"] + counts["submitting"] + in_batches,
            "pending": max(total - terminal, 0),
            "tokens": {k: v for k, v in tot.items() if k != "cost_nano"},
            "cost_nano": tot["cost_nano"],
            # Succeeded rows of models with no price: the cost above leaves them out.
            "unpriced": sum(int(m["unpriced"] or 0) for m in by_model.values()),
            "by_model": by_model,
            "by_key": by_key,
            "error_codes": error_codes,
            "errors": self.error_groups(),
            "runs": self.runs(),
            "settings": job["settings"] if job else {},
            "spec": job["spec_path"] if job else None,
        }

    def _by_key(self) -> dict[str, dict[str, Any]]:
        """Rows, outcomes and cost per key label; rows no key sent (invalid ones) are left
        out, so the costs add up to the total. Empty for a job of one key and no pool."""
        names = self.db.table_names()
        if "keys" not in names or "key_fp" not in self.db.table("rows").columns_dict:
            return {}
        keys = {r["fingerprint"]: dict(r) for r in self.db.query("SELECT * FROM keys")}
        out: dict[str, dict[str, Any]] = {}
        for k in sorted(keys.values(), key=lambda r: int(r["position"] or 0)):
            out[k["label"]] = {
                "rows": 0, "succeeded": 0, "failed": 0, "cost_nano": 0,
                "state": k["state"], "reason": k["reason"], "advice": k["advice"],
            }  # fmt: skip
        for row in self.db.query(
            "SELECT key_fp, COUNT(*) AS rows, SUM(status = 'succeeded') AS succeeded, "
            "SUM(status = 'failed') AS failed, COALESCE(SUM(cost_nano), 0) AS cost_nano "
            "FROM rows WHERE key_fp IS NOT NULL GROUP BY key_fp"
        ):
            known = keys.get(row["key_fp"])
            label = known["label"] if known else f"key {row['key_fp'][:8]} (not in the last run)"
            entry = out.setdefault(label, {"state": "gone", "reason": None, "advice": None})
            entry.update(
                rows=int(row["rows"]), succeeded=int(row["succeeded"] or 0),
                failed=int(row["failed"] or 0), cost_nano=int(row["cost_nano"]),
            )  # fmt: skip
        return out

    def runs(self) -> list[dict[str, Any]]:
        """Every run of the job (start, end, outcome, message, requests sent, retries)."""
        return [dict(r) for r in self.db.query("SELECT * FROM runs ORDER BY id")]

    def error_groups(self, limit: int = 20) -> list[dict[str, Any]]:
        """Failed rows grouped by code and message shape, largest first.

        One example per code would hide different causes under the same code (a bad JSON line
        and a missing field are both `invalid_row`); the shape drops what differs from row to
        row (line numbers, quoted values, numbers) so that each cause is its own group.
        """
        self.db.conn.create_function("message_shape", 1, message_shape, deterministic=True)
        self.db.conn.create_aggregate("first_lines", 1, _FirstLines)  # type: ignore[arg-type]
        return [
            {
                "code": code,
                "message": example,
                "rows": int(n),
                "lines": [int(x) for x in lines.split(",")] if lines else [],
            }
            for code, example, n, lines in self.db.execute(
                "SELECT error_code, MIN(error_message), COUNT(*), first_lines(line) FROM rows "
                "WHERE status = 'failed' GROUP BY error_code, message_shape(error_message) "
                "ORDER BY COUNT(*) DESC, MIN(line) LIMIT ?",
                [limit],
            )
        ]
