"""The SQLite checkpoint: the single source of truth for a job.

One row per spec row the job has touched, keyed by its position in the spec (`seq`), with
its status, attempts, timings, last error, response, usage and cost. A result counts as
done only once its transaction has committed. WAL with synchronous=NORMAL keeps every
committed row across a killed process (only an OS crash or power loss can drop the last
transactions), and one writer commits rows in batches so the store keeps pace with
thousands of rows per second.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import sqlite_utils

from .errors import CheckpointError

__all__ = ["COLUMNS", "REOPEN_CODES", "TERMINAL", "Store"]

TERMINAL = ("succeeded", "failed")
# Failed async rows that a resume polls again (never resubmits): the task outlived
# task_max_age, or its files could not be downloaded.
REOPEN_CODES = ("task_timeout", "download_failed")

# Column order of the rows table; every outcome dict carries these keys.
COLUMNS: dict[str, type] = {
    "seq": int,
    "custom_id": str,
    "line": int,
    "endpoint": str,
    "model": str,
    "status": str,
    "attempts": int,
    "http_status": int,
    "error_code": str,
    "error_message": str,
    "request_id": str,
    "request_fingerprint": str,
    "task_id": str,
    "task_status": str,
    "response": str,
    "prompt_tokens": int,
    "completion_tokens": int,
    "cached_tokens": int,
    "total_tokens": int,
    "images": int,
    "videos": int,
    "cost_nano": int,
    "started_at": float,
    "finished_at": float,
    "latency_s": float,
    "artifacts": str,
}


class Store:
    """The checkpoint of one job folder. Not thread-safe: one user at a time."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        if not create and not path.exists():
            raise CheckpointError(
                f"no checkpoint at {path}: is this the --out folder of a job run by `runner run`?"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), check_same_thread=False, timeout=5.0)
            self.db = sqlite_utils.Database(conn)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._ensure_schema()
        except sqlite3.DatabaseError as exc:
            raise CheckpointError(
                f"cannot open checkpoint {path}: {exc}. If the file is corrupt, move it away "
                "and run again (finished rows in it would be sent again)."
            ) from exc
        except OSError as exc:
            raise CheckpointError(f"cannot create checkpoint folder {path.parent}: {exc}") from exc
        cols = list(COLUMNS)
        self._insert_sql = (
            f"INSERT OR REPLACE INTO rows ({', '.join(cols)}) "
            f"VALUES ({', '.join('?' for _ in cols)})"
        )
        self._cols = cols

    def _table(self, name: str) -> sqlite_utils.db.Table:
        return self.db.table(name)

    def _ensure_schema(self) -> None:
        db = self.db
        if "rows" not in db.table_names():
            self._table("rows").create(COLUMNS, pk="seq")
            # Unique among real rows only: an invalid duplicate of a custom_id is kept as its
            # own failed row instead of replacing the valid one.
            db.execute(
                "CREATE UNIQUE INDEX idx_rows_custom_id ON rows (custom_id) "
                "WHERE error_code IS NOT 'invalid_row'"
            )
            self._table("rows").create_index(["status"])
        if "job" not in db.table_names():
            self._table("job").create(
                {
                    "key": str,
                    "spec_path": str,
                    "spec_fingerprint": str,
                    "total_rows": int,
                    "settings": str,
                    "created_at": float,
                    "updated_at": float,
                },
                pk="key",
            )
        if "runs" not in db.table_names():
            self._table("runs").create(
                {
                    "id": int,
                    "started_at": float,
                    "ended_at": float,
                    "outcome": str,
                    "message": str,
                    "sent": int,
                    "retries": int,
                },
                pk="id",
            )

    # -- job -----------------------------------------------------------------------------

    def job(self) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM job WHERE key = 'job'"))
        if not rows:
            return None
        job = dict(rows[0])
        job["settings"] = orjson.loads(job["settings"]) if job["settings"] else {}
        return job

    def init_job(
        self, spec_path: str, fingerprint: str, total_rows: int, settings: Mapping[str, Any]
    ) -> None:
        now = time.time()
        existing = self.job()
        self._table("job").upsert(
            {
                "key": "job",
                "spec_path": spec_path,
                "spec_fingerprint": fingerprint,
                "total_rows": total_rows,
                "settings": orjson.dumps(dict(settings), default=str).decode(),
                "created_at": existing["created_at"] if existing else now,
                "updated_at": now,
            },
            pk="key",
        )

    def start_run(self) -> int:
        cur = self.db.execute(
            "INSERT INTO runs (started_at, outcome, sent, retries) VALUES (?, 'running', 0, 0)",
            [time.time()],
        )
        self.db.conn.commit()
        return int(cur.lastrowid or 0)

    def end_run(self, run_id: int, outcome: str, message: str, sent: int, retries: int) -> None:
        self.db.execute(
            "UPDATE runs SET ended_at = ?, outcome = ?, message = ?, sent = ?, retries = ? "
            "WHERE id = ?",
            [time.time(), outcome, message, sent, retries, run_id],
        )
        self.db.conn.commit()

    # -- rows ------------------------------------------------------------------------------

    def record(self, outcomes: Sequence[Mapping[str, Any]]) -> None:
        """Commit a batch of row outcomes in one transaction; a replay overwrites, never adds."""
        if not outcomes:
            return
        cols = self._cols
        conn = self.db.conn
        try:
            with conn:
                conn.executemany(self._insert_sql, [[o.get(c) for c in cols] for o in outcomes])
        except sqlite3.OperationalError as exc:
            raise CheckpointError(
                f"cannot write checkpoint {self.path}: {exc}. Nothing after the last commit "
                "was counted as done; fix the cause (disk full? read-only?) and resume."
            ) from exc

    def terminal_seqs(self) -> Iterator[int]:
        """Seqs of rows with a final result (succeeded or failed)."""
        for (seq,) in self.db.execute(
            "SELECT seq FROM rows WHERE status IN ('succeeded', 'failed')"
        ):
            yield int(seq)

    def done_bitmap(self, total: int) -> bytearray:
        """A bit per spec row, set when the row is terminal: O(rows/8) memory for resume."""
        bits = bytearray((max(total, 0) + 8) // 8)
        for seq in self.terminal_seqs():
            if seq < total:
                bits[seq >> 3] |= 1 << (seq & 7)
        return bits

    def open_tasks(self) -> list[dict[str, Any]]:
        """Async rows a resume must settle: submitted (or about to be) but not terminal, and
        failures that are only "not yet" (`REOPEN_CODES`) and carry a task id to poll again."""
        codes = ", ".join(f"'{c}'" for c in REOPEN_CODES)
        return [
            dict(r)
            for r in self.db.query(
                "SELECT * FROM rows WHERE status IN ('submitting', 'submitted') OR "
                f"(status = 'failed' AND task_id IS NOT NULL AND error_code IN ({codes})) "
                "ORDER BY seq"
            )
        ]

    def discard(self, seqs: Sequence[int]) -> None:
        """Forget rows (an async row's submit intent once the platform refused it)."""
        try:
            with self.db.conn as conn:
                conn.executemany("DELETE FROM rows WHERE seq = ?", [[s] for s in seqs])
        except sqlite3.OperationalError as exc:
            raise CheckpointError(f"cannot write checkpoint {self.path}: {exc}") from exc

    def get(self, custom_id: str) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM rows WHERE custom_id = ?", [custom_id]))
        return dict(rows[0]) if rows else None

    def iter_rows(self, batch: int = 10_000) -> Iterator[list[dict[str, Any]]]:
        """Every stored row in spec order, in chunks (for export)."""
        last = -1
        while True:
            chunk = [
                dict(r)
                for r in self.db.query(
                    "SELECT * FROM rows WHERE seq > ? ORDER BY seq LIMIT ?", [last, batch]
                )
            ]
            if not chunk:
                return
            yield chunk
            last = chunk[-1]["seq"]

    # -- totals ---------------------------------------------------------------------------

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
            by_model[m.pop("model") or "(none)"] = m
        errors = [
            {"code": code, "message": msg, "rows": int(n)}
            for code, msg, n in self.db.execute(
                "SELECT error_code, MIN(error_message), COUNT(*) FROM rows "
                "WHERE status = 'failed' GROUP BY error_code ORDER BY COUNT(*) DESC LIMIT 20"
            )
        ]
        terminal = counts["succeeded"] + counts["failed"]
        runs = [dict(r) for r in self.db.query("SELECT * FROM runs ORDER BY id")]
        return {
            "total": total,
            "succeeded": counts["succeeded"],
            "failed": counts["failed"],
            "in_progress": counts["submitted"] + counts["submitting"],
            "pending": max(total - terminal, 0),
            "tokens": {k: v for k, v in tot.items() if k != "cost_nano"},
            "cost_nano": tot["cost_nano"],
            "by_model": by_model,
            "errors": errors,
            "runs": runs,
            "settings": job["settings"] if job else {},
            "spec": job["spec_path"] if job else None,
        }

    def integrity_check(self) -> str:
        return str(self.db.execute("PRAGMA integrity_check").fetchone()[0])

    def close(self) -> None:
        self.db.conn.close()
