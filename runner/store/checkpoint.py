"""`Store`: the checkpoint of one job folder: schema, job, runs and rows (see __init__)."""

from __future__ import annotations

import operator
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from ..errors import CheckpointError
from ..outcome import COLUMNS, Outcome
from .batches import BATCH_COLUMNS, BatchTables
from .opening import Claims, advice, connect_read_only, earlier_attempts, row_columns
from .sql import Database
from .totals import BLOCK, Totals, add_blocks, add_tally, tally, totals_triggers
from .uploads import UploadTables

__all__ = ["REOPEN_CODES", "TERMINAL", "Store"]

TERMINAL = ("succeeded", "failed")
# Failed async rows that a resume polls again (never resubmits): the task outlived
# task_max_age, or its files could not be downloaded.
REOPEN_CODES = ("task_timeout", "download_failed")

# How long a commit waits for a lock another process holds (a backup, a sqlite3 shell).
_BUSY_MS = 5000
# The WAL is started over past this many frames (256 MB of 4 KB pages; see checkpoint_wal),
# and the checkpoint that does it waits this long for the writer and readers to let it.
WAL_RESTART_FRAMES = 1 << 16
_RESTART_WAIT_MS = 200


class Store(BatchTables, Totals, UploadTables):
    """The checkpoint of one job folder. Not thread-safe: one user at a time."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        if not create and not path.exists():
            raise CheckpointError(
                f"no checkpoint at {path}: is this the --out folder of a job run by `runner run`?"
            )
        # Only a reader (`runner status`) may meet a folder it cannot write: read-only media,
        # a snapshot. The job's writer always opens read-write, so a read-only folder stops
        # it with the store's advice before anything is sent.
        self.read_only = not create and not os.access(path.parent, os.W_OK)
        try:
            if self.read_only:
                conn = connect_read_only(path)
                self.db = Database(conn)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(str(path), check_same_thread=False, timeout=_BUSY_MS / 1000)
                self.db = Database(conn)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                # A REPLACE's delete fires the trigger that keeps `totals` right only so.
                self.db.execute("PRAGMA recursive_triggers=ON")
                self._ensure_schema()
        except sqlite3.DatabaseError as exc:
            raise CheckpointError(
                f"cannot open checkpoint {path}: {exc}. {advice(exc, path)}"
            ) from exc
        except OSError as exc:
            raise CheckpointError(f"cannot create checkpoint folder {path.parent}: {exc}") from exc
        cols = list(COLUMNS)
        self._insert_sql = (
            f"INSERT OR REPLACE INTO rows ({', '.join(cols)}) "
            f"VALUES ({', '.join('?' for _ in cols)})"
        )
        self._getter = operator.attrgetter(*cols)
        self._checkpointer: sqlite3.Connection | None = None

    def _ensure_schema(self) -> None:
        db = self.db
        if "rows" not in db.table_names():
            db.create_table("rows", COLUMNS, pk="seq")
            # Unique among real rows only: an invalid duplicate of a custom_id is kept as its
            # own failed row instead of replacing the valid one.
            db.execute(
                "CREATE UNIQUE INDEX idx_rows_custom_id ON rows (custom_id) "
                "WHERE error_code IS NOT 'invalid_row'"
            )
            db.create_index("rows", ["status"])
        elif "key_fp" not in db.columns("rows"):
            # A checkpoint from before key pools: rows it recorded name no key.
            db.execute("ALTER TABLE rows ADD COLUMN key_fp TEXT")
        if "keys" not in db.table_names():
            # The job's keys by safe names only (keys.py): never the key itself.
            db.create_table(
                "keys",
                {
                    "fingerprint": str,
                    "position": int,
                    "label": str,
                    "state": str,
                    "reason": str,
                    "advice": str,
                    "updated_at": float,
                },
                pk="fingerprint",
            )
        if "job" not in db.table_names():
            db.create_table(
                "job",
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
        if "batches" not in db.table_names():
            # Batch mode (batch.py): one row per uploaded file, with its steps as they commit.
            db.create_table("batches", BATCH_COLUMNS, pk="key")
        elif "key_fp" not in db.columns("batches"):
            db.execute("ALTER TABLE batches ADD COLUMN key_fp TEXT")
        if "batch_rows" not in db.table_names():
            # Which spec rows a batch file carries, so a resume never plans them twice.
            db.create_table(
                "batch_rows", {"seq": int, "custom_id": str, "line": int, "key": int}, pk="seq"
            )
            db.create_index("batch_rows", ["key"])
        self._ensure_agent_files()
        if "runs" not in db.table_names():
            db.create_table(
                "runs",
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
        self._ensure_totals()

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
        record = orjson.dumps(dict(settings), default=str).decode()
        try:
            # The first write of a run, so a lock, a read-only mount or a full disk shows
            # here. One statement (sqlite-utils' upsert takes two), so a held lock is
            # reported after one busy timeout instead of two.
            with self.db.conn as conn:
                conn.execute(
                    "INSERT INTO job (key, spec_path, spec_fingerprint, total_rows, settings, "
                    "created_at, updated_at) VALUES ('job', ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET spec_path = excluded.spec_path, "
                    "spec_fingerprint = excluded.spec_fingerprint, "
                    "total_rows = excluded.total_rows, settings = excluded.settings, "
                    "updated_at = excluded.updated_at",
                    [spec_path, fingerprint, total_rows, record, now, now],
                )
        except sqlite3.DatabaseError as exc:
            raise CheckpointError(
                f"cannot write checkpoint {self.path}: {exc}. {advice(exc, self.path)}"
            ) from exc

    def start_run(self) -> int:
        try:
            cur = self.db.execute(
                "INSERT INTO runs (started_at, outcome, sent, retries) VALUES (?, 'running', 0, 0)",
                [time.time()],
            )
            self.db.conn.commit()
        except sqlite3.DatabaseError as exc:
            raise CheckpointError(
                f"cannot write checkpoint {self.path}: {exc}. {advice(exc, self.path)}"
            ) from exc
        return int(cur.lastrowid or 0)

    def end_run(self, run_id: int, outcome: str, message: str, sent: int, retries: int) -> None:
        self.db.execute(
            "UPDATE runs SET ended_at = ?, outcome = ?, message = ?, sent = ?, retries = ? "
            "WHERE id = ?",
            [time.time(), outcome, message, sent, retries, run_id],
        )
        self.db.conn.commit()

    def record_keys(self, states: Sequence[Mapping[str, Any]]) -> None:
        """The keys of this run and their state (active, or retired and why)."""
        with self.db.conn:
            self.db.upsert("keys", states, pk="fingerprint")

    # -- rows ------------------------------------------------------------------------------

    def record(self, outcomes: Sequence[Outcome]) -> None:
        """Commit a batch of row outcomes in one transaction; a replay overwrites, never adds."""
        if not outcomes:
            return
        values = list(map(self._getter, outcomes))  # one C call per outcome
        lines = tally(outcomes)
        conn = self.db.conn
        try:
            with conn:
                conn.executemany(self._insert_sql, values)
                add_tally(conn, lines)
                add_blocks(conn, outcomes)
        except sqlite3.OperationalError as exc:
            raise CheckpointError(
                f"cannot write checkpoint {self.path}: {exc}. Nothing after the last commit "
                "was counted as done; fix the cause (disk full? read-only?) and resume."
            ) from exc

    def record_at_once(self, outcomes: Sequence[Outcome]) -> bool:
        """`record`, but give up at once (False, nothing written) if another process holds
        the lock, instead of waiting up to the busy timeout; the caller then waits for it
        with `record` in a thread. Lets the writer commit on the event loop, where a commit
        of a few hundred rows takes milliseconds, without ever stalling the loop on a lock.
        """
        conn = self.db.conn
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            self.record(outcomes)
        except CheckpointError as exc:
            cause = exc.__cause__
            if isinstance(cause, sqlite3.OperationalError) and "locked" in str(cause):
                return False
            raise
        finally:
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
        return True

    def claims(self) -> Claims:
        """What a resume's reader asks about the ids of the rows it skips (see `Claims`)."""
        return Claims(self.path)

    def defer_checkpoints(self, deferred: bool) -> None:
        """Stop (or restart) the writer's own WAL checkpoints while `checkpoint_wal` runs.

        SQLite checkpoints inside the commit that crosses 1,000 WAL pages, and that commit
        then takes hundreds of milliseconds (it copies pages and syncs the file): answers
        pile up behind it, and a kill -9 then loses them all. Deferred, every commit only
        appends to the WAL, and the copying happens beside it.
        """
        self.db.execute(f"PRAGMA wal_autocheckpoint={0 if deferred else 1000}")

    def checkpoint_wal(self) -> None:
        """Copy committed WAL pages into the file from a second connection (PASSIVE: it
        neither waits for nor blocks the writer); best effort, the next call catches up.

        A passive checkpoint never starts the WAL over: only a commit that finds every
        frame copied does, and while commits go on beside the copying that moment hardly
        comes. A 10M-row job's WAL grew to 2.25 GB, and with it the WAL index each
        connection maps (32 KB a 4,096 frames): 4.4 MB of RSS in the job and as much in its
        results writer. Past `WAL_RESTART_FRAMES` a TRUNCATE checkpoint holds the writer
        off while it copies the few frames the passive one left and empties the file; the
        job's commits wait for it in a thread, as for any other lock.
        """
        try:
            conn = self._checkpointer
            if conn is None:
                conn = self._checkpointer = sqlite3.connect(
                    str(self.path), check_same_thread=False, timeout=0
                )
            _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames > WAL_RESTART_FRAMES:
                conn.execute(f"PRAGMA busy_timeout = {_RESTART_WAIT_MS}")
                try:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                finally:
                    conn.execute("PRAGMA busy_timeout = 0")
        except sqlite3.Error:
            pass

    def terminal_seqs(self) -> Iterator[int]:
        """Seqs of rows with a final result (succeeded or failed)."""
        for (seq,) in self.db.execute(
            "SELECT seq FROM rows WHERE status IN ('succeeded', 'failed')"
        ):
            yield int(seq)

    def done_bitmap(self, total: int) -> bytearray:
        """A bit per spec row, set when the row is final: O(rows/8) memory for resume.

        The kept `blocks` say how many rows of each block of 4,096 seqs are final, so the
        blocks that are wholly done (all but a ragged edge, in a resumed job) are filled
        without reading a row; only the others are read, by seq.
        """
        bits = bytearray((max(total, 0) + 8) // 8)
        size = 1 << BLOCK
        ragged = []
        for block, n in self.done_blocks():
            lo = block << BLOCK
            if n == size and lo + size <= total:  # seq is the key: every seq of it is there
                bits[lo >> 3 : (lo + size) >> 3] = b"\xff" * (size >> 3)
            elif lo < total:
                ragged.append(lo)
        for lo in ragged:
            for (seq,) in self.db.execute(
                "SELECT seq FROM rows WHERE status IN ('succeeded', 'failed') "
                "AND seq >= ? AND seq < ?",
                [lo, min(lo + size, total)],
            ):
                bits[seq >> 3] |= 1 << (seq & 7)
        return bits

    def stored_total(self, fingerprint: str) -> int | None:
        """The spec's row count as recorded, if the checkpoint's job has this spec."""
        job = self.job()
        if job is None or job["spec_fingerprint"] != fingerprint or job["total_rows"] is None:
            return None
        return int(job["total_rows"])

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

    def finished_rows(self) -> Iterator[tuple[int, int | None, str, str, str | None, Any]]:
        """(seq, line, custom_id, status, error_code, finish_reason) of every terminal row,
        in spec order: what `runner retry` chooses from."""
        yield from self.db.execute(
            "SELECT seq, line, custom_id, status, error_code, "
            "CASE WHEN json_valid(response) THEN "
            "json_extract(response, '$.choices[0].finish_reason') END "
            "FROM rows WHERE status IN ('succeeded', 'failed') ORDER BY seq"
        )

    def next_run_id(self) -> int:
        return int(self.db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM runs").fetchone()[0])

    def archive(self, seqs: Sequence[int], run: int) -> int:
        """Move rows' outcomes into `attempts` (a retry sends them again): in one transaction,
        so a kill -9 leaves each row either still done or pending with its old attempt kept.
        Nothing billed leaves the checkpoint: totals and the export add `attempts` back
        (the triggers move the rows' sums in `totals` from kind 'row' to 'attempt')."""
        cols = ", ".join(COLUMNS)
        try:
            with self.db.conn as conn:
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS attempts ({cols}, superseded_by_run INTEGER)"
                )
                conn.execute("CREATE INDEX IF NOT EXISTS idx_attempts_seq ON attempts (seq)")
                for sql in totals_triggers("attempts"):
                    conn.execute(sql)
                for i in range(0, len(seqs), 500):
                    part = list(seqs[i : i + 500])
                    marks = ", ".join("?" * len(part))
                    conn.execute(
                        f"INSERT INTO attempts ({cols}, superseded_by_run) "
                        f"SELECT {cols}, ? FROM rows WHERE seq IN ({marks})",
                        [run, *part],
                    )
                    conn.execute(f"DELETE FROM rows WHERE seq IN ({marks})", part)
                    # A row of a merged batch file is planned afresh (`--mode batch`).
                    conn.execute(f"DELETE FROM batch_rows WHERE seq IN ({marks})", part)
        except sqlite3.OperationalError as exc:
            raise CheckpointError(f"cannot write checkpoint {self.path}: {exc}") from exc
        return len(seqs)

    def earlier_attempts(self) -> dict[int, tuple[int, int]]:
        """seq -> (requests sent, cost in nano-units) of rows' superseded attempts."""
        return earlier_attempts(self.db.conn)

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

    def iter_columns(
        self, columns: Sequence[str], batch: int = 20_000
    ) -> Iterator[list[tuple[Any, ...]]]:
        """Every stored row as tuples of (seq, *columns), in spec order and in chunks."""
        return row_columns(self.db.conn, columns, batch)

    def integrity_check(self) -> str:
        return str(self.db.execute("PRAGMA integrity_check").fetchone()[0])

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()  # first: the last connection folds the WAL in
        self.db.conn.close()
