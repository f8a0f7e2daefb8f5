"""The SQLite checkpoint: the single source of truth for a job.

One row per spec row the job has touched, keyed by its position in the spec (`seq`), with
its status, attempts, timings, last error, response, usage and cost. A result counts as
done only once its transaction has committed. WAL with synchronous=NORMAL keeps every
committed row across a killed process (only an OS crash or power loss can drop the last
transactions), and one writer commits rows in batches so the store keeps pace with
thousands of rows per second.

Why one module of about 500 lines: every SQL statement of the checkpoint's job tables lives
here, next to the schema it depends on, so a change of a table is one file to read; the
callers see methods, never SQL. (The report's own `timeline` table is report/timeline.py's.)
"""

from __future__ import annotations

import heapq
import operator
import os
import re
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import sqlite_utils

from .errors import CheckpointError
from .outcome import COLUMNS, Outcome

__all__ = ["BATCH_COLUMNS", "COLUMNS", "REOPEN_CODES", "TERMINAL", "Claims", "Store", "advice"]

TERMINAL = ("succeeded", "failed")
# Failed async rows that a resume polls again (never resubmits): the task outlived
# task_max_age, or its files could not be downloaded.
REOPEN_CODES = ("task_timeout", "download_failed")

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
_OPEN_BATCH_SQL = (
    "SELECT {cols} FROM batch_rows b JOIN batches k ON k.key = b.key "
    "LEFT JOIN rows r ON r.seq = b.seq "
    "WHERE k.state != 'merged' AND (r.status IS NULL OR r.status NOT IN ('succeeded', 'failed'))"
)


# done_bitmap counts rows per block of 2**_BLOCK seqs.
_BLOCK = 12
# How long a commit waits for a lock another process holds (a backup, a sqlite3 shell).
_BUSY_MS = 5000

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


def advice(exc: sqlite3.DatabaseError, path: Path) -> str:
    """What to do about a checkpoint SQLite refused, by what it said.

    The advice differs on purpose: moving a checkpoint away re-sends (and re-bills) every
    finished row, so it is offered only for a corrupt file, never for a locked or
    read-only one, which is healthy and only needs the other process or the mount fixed.
    """
    text = str(exc).lower()
    if "unable to open" in text and path.parent.is_dir() and not os.access(path.parent, os.W_OK):
        text = "read-only"  # a WAL checkpoint can't even be opened without its -shm file
    if "locked" in text or "busy" in text:
        return (
            "Another process holds it (a second `runner run` or `resume` on this folder, or an "
            "open sqlite3 transaction): stop that process, then run again. Nothing is lost."
        )
    if "readonly" in text or "read-only" in text:
        return "The folder or file is read-only: make it writable, then run again."
    if "full" in text:
        return "The disk is full: free some space, then run again. Nothing committed is lost."
    if "not a database" in text or "malformed" in text:
        return (
            "The file is corrupt: move it (with its -wal and -shm files) away and run again; "
            "finished rows in it would be sent again."
        )
    return "Check that it is a writable file (not a folder) on a working disk, then run again."


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """Open a checkpoint in a folder that cannot be written, seeing every committed row.

    A WAL database needs its `-shm` file. A killed run leaves `-wal` and `-shm` behind:
    `mode=ro` reads through both (the WAL holds the last commits). A run that closed
    cleanly folded its WAL into the file and deleted both; `mode=ro` would then need to
    create `-shm`, which it cannot, while `immutable=1` reads the file alone, which is then
    the whole truth. (`immutable=1` with a WAL present would hide its commits, so it is
    never used then.)
    """
    uri = path.resolve().as_uri()
    wal = path.with_name(path.name + "-wal")
    has_wal = wal.exists() and wal.stat().st_size > 0
    mode = "mode=ro" if has_wal else "immutable=1"
    return sqlite3.connect(f"{uri}?{mode}", uri=True, check_same_thread=False, timeout=5.0)


class Claims:
    """Whether a custom_id was claimed by a row stored in the checkpoint, for a reader that
    skips finished rows without parsing them (`read_spec`'s `taken`).

    Every row read claims its id, and every stored row keeps the id it claimed (a
    duplicate is stored without one), so the stored ids are exactly the skipped rows'
    claims. One indexed lookup per row the reader parses, on a connection of its own (the
    reader runs in a thread beside the writer; WAL lets it read while the writer commits).
    Invalid rows that claimed an id are outside the unique index; they are few, and held
    in memory.
    """

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
        )
        self._invalid = {
            str(cid)
            for (cid,) in self._conn.execute(
                "SELECT custom_id FROM rows WHERE status = 'failed' "
                "AND error_code = 'invalid_row' AND custom_id IS NOT NULL"
            )
        }
        # `error_code IS NOT 'invalid_row'` as the index states it, so SQLite uses the index.
        self._sql = (
            "SELECT 1 FROM rows WHERE custom_id = ? AND error_code IS NOT 'invalid_row' "
            "AND seq < ? LIMIT 1"
        )

    def __call__(self, custom_id: str, seq: int) -> bool:
        if custom_id in self._invalid:
            return True
        return self._conn.execute(self._sql, (custom_id, seq)).fetchone() is not None

    def close(self) -> None:
        self._conn.close()


class Store:
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
                conn = _connect_read_only(path)
                self.db = sqlite_utils.Database(conn)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(str(path), check_same_thread=False, timeout=_BUSY_MS / 1000)
                self.db = sqlite_utils.Database(conn)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
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
        elif "key_fp" not in self._table("rows").columns_dict:
            # A checkpoint from before key pools: rows it recorded name no key.
            db.execute("ALTER TABLE rows ADD COLUMN key_fp TEXT")
        if "keys" not in db.table_names():
            # The job's keys by safe names only (keys.py): never the key itself.
            self._table("keys").create(
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
        if "batches" not in db.table_names():
            # Batch mode (batch.py): one row per uploaded file, with its steps as they commit.
            self._table("batches").create(BATCH_COLUMNS, pk="key")
        elif "key_fp" not in self._table("batches").columns_dict:
            db.execute("ALTER TABLE batches ADD COLUMN key_fp TEXT")
        if "batch_rows" not in db.table_names():
            # Which spec rows a batch file carries, so a resume never plans them twice.
            self._table("batch_rows").create(
                {"seq": int, "custom_id": str, "line": int, "key": int}, pk="seq"
            )
            self._table("batch_rows").create_index(["key"])
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
            self._table("keys").upsert_all([dict(s) for s in states], pk="fingerprint")

    # -- rows ------------------------------------------------------------------------------

    def record(self, outcomes: Sequence[Outcome]) -> None:
        """Commit a batch of row outcomes in one transaction; a replay overwrites, never adds."""
        if not outcomes:
            return
        values = list(map(self._getter, outcomes))  # one C call per outcome
        conn = self.db.conn
        try:
            with conn:
                conn.executemany(self._insert_sql, values)
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
        neither waits for nor blocks the writer); best effort, the next call catches up."""
        try:
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(
                    str(self.path), check_same_thread=False, timeout=0
                )
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            pass

    def terminal_seqs(self) -> Iterator[int]:
        """Seqs of rows with a final result (succeeded or failed)."""
        for (seq,) in self.db.execute(
            "SELECT seq FROM rows WHERE status IN ('succeeded', 'failed')"
        ):
            yield int(seq)

    def done_bitmap(self, total: int) -> bytearray:
        """A bit per spec row, set when the row is terminal: O(rows/8) memory for resume.

        Counted per block of 4,096 seqs first, in SQL over the status index, so the blocks
        that are wholly done (all of them but a ragged edge, in a resumed job) are filled
        without handing each row to Python: 0.12 s instead of 0.47 s for 500,000 rows.
        """
        bits = bytearray((max(total, 0) + 8) // 8)
        size = 1 << _BLOCK
        ragged = []
        for block, n in self.db.execute(
            f"SELECT seq >> {_BLOCK}, COUNT(*) FROM rows "
            "WHERE status IN ('succeeded', 'failed') GROUP BY 1"
        ):
            lo = int(block) << _BLOCK
            if n == size and lo + size <= total:  # seq is the key: every seq of it is there
                bits[lo >> 3 : (lo + size) >> 3] = b"\xff" * (size >> 3)
            else:
                ragged.append(lo)
        for lo in ragged:
            for (seq,) in self.db.execute(
                "SELECT seq FROM rows WHERE status IN ('succeeded', 'failed') "
                "AND seq >= ? AND seq < ?",
                [lo, min(lo + size, total)],
            ):
                bits[seq >> 3] |= 1 << (seq & 7)
        return bits

    def total_cost(self) -> int:
        """The cost of every stored row, in nano-units (what a --max-cost resume has spent)."""
        return int(self.db.execute("SELECT COALESCE(SUM(cost_nano), 0) FROM rows").fetchone()[0])

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
        """Every stored row as tuples of `columns`, in spec order and in chunks (Parquet)."""
        for name in columns:
            if name not in COLUMNS:
                raise ValueError(f"unknown column {name!r}")
        sql = f"SELECT seq, {', '.join(columns)} FROM rows WHERE seq > ? ORDER BY seq LIMIT ?"
        last = -1
        while True:
            chunk = self.db.conn.execute(sql, [last, batch]).fetchall()
            if not chunk:
                return
            last = chunk[-1][0]
            yield [row[1:] for row in chunk]

    # -- batches (batch mode) -------------------------------------------------------------

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
        for (seq,) in self.db.execute(_OPEN_BATCH_SQL.format(cols="b.seq")):
            yield int(seq)

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
        error_codes = {
            str(code): int(n)
            for code, n in self.db.execute(
                "SELECT error_code, COUNT(*) FROM rows WHERE status = 'failed' "
                "GROUP BY error_code ORDER BY COUNT(*) DESC"
            )
        }
        terminal = counts["succeeded"] + counts["failed"]
        in_batches = int(
            self.db.execute(_OPEN_BATCH_SQL.format(cols="COUNT(*)")).fetchone()[0] or 0
        )
        by_key = self._by_key()
        return {
            "total": total,
            "succeeded": counts["succeeded"],
            "failed": counts["failed"],
            "in_progress": counts["submitted"] + counts["submitting"] + in_batches,
            "pending": max(total - terminal, 0),
            "tokens": {k: v for k, v in tot.items() if k != "cost_nano"},
            "cost_nano": tot["cost_nano"],
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
        if "keys" not in names or "key_fp" not in self._table("rows").columns_dict:
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

    def integrity_check(self) -> str:
        return str(self.db.execute("PRAGMA integrity_check").fetchone()[0])

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()  # first: the last connection folds the WAL in
        self.db.conn.close()
