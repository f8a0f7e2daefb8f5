"""Batch mode's tables: one row per uploaded file (`batches`), and which spec rows each
carries (`batch_rows`), so a resume never plans a row twice."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .sql import Database

__all__ = ["BATCH_COLUMNS", "OPEN_BATCH_SQL", "BatchTables"]

# One row per batch file (batch mode); `state` is the runner's step, `status` the platform's.
BATCH_COLUMNS: dict[str, type] = {
    "key": int,
    "endpoint": str,
    "model": str,
    "path": str,
    "lines": int,
    "bytes": int,
    "worst_nano": int,
    "state": str,
    "file_id": str,
    "batch_id": str,
    "status": str,
    "output_file_id": str,
    "error_file_id": str,
    "request_counts": str,
    "message": str,
    "created_at": float,
    "updated_at": float,
    # The key that uploaded the file and created the batch (its fingerprint, keys.py).
    "key_fp": str,
}
OPEN_BATCH_SQL = (
    "SELECT {cols} FROM batch_rows b JOIN batches k ON k.key = b.key "
    "LEFT JOIN rows r ON r.seq = b.seq "
    "WHERE k.state != 'merged' AND (r.status IS NULL OR r.status NOT IN ('succeeded', 'failed'))"
)


class BatchTables:
    """Mixed into `Store`: the batch-mode methods over its connection."""

    db: Database
    path: Path

    def plan_batch(
        self, record: Mapping[str, Any], members: Sequence[tuple[int, str, int]]
    ) -> None:
        """Commit one planned batch file and the rows (seq, custom_id, line) it carries."""
        row = {c: record.get(c) for c in BATCH_COLUMNS}
        try:
            with self.db.conn as conn:
                conn.execute(
                    f"INSERT INTO batches ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                    list(row.values()),
                )
                conn.executemany(
                    "INSERT OR REPLACE INTO batch_rows (seq, custom_id, line, key) "
                    "VALUES (?, ?, ?, ?)",
                    [(seq, cid, line, record["key"]) for seq, cid, line in members],
                )
        except sqlite3.OperationalError as exc:
            raise CheckpointError(f"cannot write checkpoint {self.path}: {exc}") from exc

    def batches(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.query("SELECT * FROM batches ORDER BY key")]

    def update_batch(self, key: int, **values: Any) -> None:
        """Commit one step of a batch (intent, file id, batch id, status, merged) at once."""
        values["updated_at"] = time.time()
        sets = ", ".join(f"{k} = ?" for k in values)
        try:
            with self.db.conn as conn:
                conn.execute(f"UPDATE batches SET {sets} WHERE key = ?", [*values.values(), key])
        except sqlite3.OperationalError as exc:
            raise CheckpointError(f"cannot write checkpoint {self.path}: {exc}") from exc

    def batch_members(self, key: int) -> dict[str, tuple[int, int]]:
        """custom_id -> (seq, line) for the rows one batch file carries."""
        return {
            str(cid): (int(seq), int(line or 0))
            for cid, seq, line in self.db.execute(
                "SELECT custom_id, seq, line FROM batch_rows WHERE key = ?", [key]
            )
        }

    def batch_failures(self) -> list[tuple[int, str | None, int | None]]:
        """(seq, error_code, http_status) of failed rows that a batch answered (merged rows
        carry the batch id in `task_id`; rows since failed online do not)."""
        return [
            (int(seq), code, status)
            for seq, code, status in self.db.execute(
                "SELECT r.seq, r.error_code, r.http_status FROM rows r "
                "JOIN batch_rows b ON b.seq = r.seq "
                "WHERE r.status = 'failed' AND r.task_id IS NOT NULL"
            )
        ]

    def batched_seqs(self) -> Iterator[int]:
        """Seqs already planned into some batch file (a resume plans only the others)."""
        for (seq,) in self.db.execute("SELECT seq FROM batch_rows"):
            yield int(seq)

    def open_batch_seqs(self) -> Iterator[int]:
        """Rows inside batches not yet merged and with no final result: the online pool
        must not send them (the batch may still answer them, and bill them)."""
        for (seq,) in self.db.execute(OPEN_BATCH_SQL.format(cols="b.seq")):
            yield int(seq)
