"""Opening a checkpoint: what to do when SQLite refuses it, reading it where nothing can be
written, and the readers that run beside the writer (the spec reader's id lookups, the
results file that follows the job)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..outcome import COLUMNS

__all__ = [
    "Claims",
    "FinishedRows",
    "advice",
    "connect_read_only",
    "earlier_attempts",
    "row_columns",
]


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


def connect_read_only(path: Path) -> sqlite3.Connection:
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


def row_columns(
    conn: sqlite3.Connection,
    columns: Sequence[str],
    batch: int,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[list[tuple[Any, ...]]]:
    """Stored rows with `start` <= seq < `stop` as tuples of (seq, *columns), in spec
    order and in chunks of `batch`."""
    for name in columns:
        if name not in COLUMNS:
            raise ValueError(f"unknown column {name!r}")
    sql = f"SELECT seq, {', '.join(columns)} FROM rows WHERE seq >= ? AND seq < ? ORDER BY seq"
    last = start
    end = (1 << 62) if stop is None else stop
    while True:
        chunk = conn.execute(sql + " LIMIT ?", [last, end, batch]).fetchall()
        if not chunk:
            return
        last = chunk[-1][0] + 1
        yield chunk


class FinishedRows:
    """The checkpoint's rows as a reader beside the writer sees them (WAL: neither waits
    for the other), for a results file written while the job runs."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
        )

    def final_run(self, start: int, stop: int) -> int:
        """The end of the unbroken run of final rows from `start`: every seq in
        [start, end) is stored and succeeded or failed; `end` <= `stop`."""
        end = start
        for seq, status in self.conn.execute(
            "SELECT seq, status FROM rows WHERE seq >= ? AND seq < ? ORDER BY seq", [start, stop]
        ):
            if seq != end or status not in ("succeeded", "failed"):
                break
            end += 1
        return end

    def close(self) -> None:
        self.conn.close()


def earlier_attempts(conn: sqlite3.Connection) -> dict[int, tuple[int, int]]:
    """seq -> (requests sent, cost in nano-units) of rows' superseded attempts (`runner
    retry` keeps them in `attempts`)."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'attempts'").fetchone():
        return {}
    return {
        int(seq): (int(n or 0), int(cost or 0))
        for seq, n, cost in conn.execute(
            "SELECT seq, SUM(COALESCE(attempts, 1)), SUM(COALESCE(cost_nano, 0)) "
            "FROM attempts GROUP BY seq"
        )
    }
