"""The driver's side of the inbox: fold the shards' batches into the job's checkpoint, so
every reader of a job folder (`runner status`, `export`, `report`, results.parquet) sees
one job of the whole spec, and tell a starting shard which of its rows the job holds.

A shard counts its rows from 0; in the job's checkpoint a row's seq is the spec's (the
shard's first seq added). A shipped row replaces the job's copy of it, so a batch sent
twice only brings the checkpoint up to date. Only the driver writes the job's folder.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..artifacts import ARTIFACTS_DIR
from ..errors import CheckpointError
from ..lifecycle import checkpoint_path
from ..outcome import COLUMNS
from ..spec import SpecWindow
from ..store import TERMINAL, Store, advice
from .inbox import Batch

__all__ = ["apply", "held_rows", "merge_legacy"]

_INSERT = (
    f"INSERT OR REPLACE INTO rows ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
)
_RESPONSE = list(COLUMNS).index("response")


def apply(store: Store, out: Path, windows: list[SpecWindow], batches: Iterable[Batch]) -> int:
    """Merge batches into `store` in one transaction, their artifacts written first (a
    row the checkpoint holds has its files in DIR). Returns the rows merged."""
    rows: list[tuple[Any, ...]] = []
    gone: list[tuple[int]] = []
    keys: dict[str, dict[str, Any]] = {}
    for batch in batches:
        first = windows[batch.shard].first_seq
        for name, data in batch.files.items():
            _write_artifact(out, name, data)
        rows.extend((row[0] + first, *row[1:]) for row in batch.rows)
        gone.extend((seq + first,) for seq in batch.gone)
        for state in batch.keys or ():
            seen = keys.get(str(state["fingerprint"]))
            # A key one shard retired is retired for the job, whatever the others say.
            if seen is None or (state["state"] == "retired" and seen["state"] != "retired"):
                keys[str(state["fingerprint"])] = state
    conn = store.db.conn
    try:
        with conn:
            if gone:
                conn.executemany("DELETE FROM rows WHERE seq = ?", gone)
            if rows:
                conn.executemany(_INSERT, rows)
                # `record` never saw these rows: add them to the totals status reads (a
                # replaced row was taken away by the totals' delete trigger).
                conn.execute("CREATE TEMP TABLE IF NOT EXISTS merged AS SELECT * FROM rows WHERE 0")
                conn.execute("DELETE FROM temp.merged")
                conn.executemany(_INSERT.replace("INTO rows", "INTO temp.merged", 1), rows)
                store.add_totals_of("temp.merged")
        if keys:
            store.record_keys(_keep_retired(store, keys))
    except sqlite3.DatabaseError as exc:
        raise CheckpointError(
            f"cannot write checkpoint {store.path}: {exc}. {advice(exc, store.path)}"
        ) from exc
    return len(rows)


def _keep_retired(store: Store, keys: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """A shard that started after a key was retired elsewhere reports it active."""
    retired = {
        fp for (fp,) in store.db.execute("SELECT fingerprint FROM keys WHERE state = 'retired'")
    }
    return [s for fp, s in keys.items() if fp not in retired or s["state"] == "retired"]


def _write_artifact(out: Path, name: str, data: bytes) -> None:
    """A file a shard sent back: only ever a plain name in DIR/artifacts."""
    folder, _, base = name.partition("/")
    if folder != ARTIFACTS_DIR or not base or "/" in base or base.startswith(".") or "\\" in base:
        raise CheckpointError(f"a shard sent an artifact outside {ARTIFACTS_DIR}/: {name!r}")
    root = out / ARTIFACTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{base}.part"
    tmp.write_bytes(data)
    os.replace(tmp, root / base)


def held_rows(store: Store, window: SpecWindow) -> list[tuple[Any, ...]]:
    """The rows of `window` the job holds, with the shard's seqs: what a starting shard
    skips. A finished row's answer stays here (the shard only needs to know it is done)."""
    end = window.first_seq + window.rows
    terminal = set(TERMINAL)
    held = []
    for row in store.db.execute(
        f"SELECT {', '.join(COLUMNS)} FROM rows WHERE seq >= ? AND seq < ?",
        [window.first_seq, end],
    ):
        values = list(row)
        values[0] -= window.first_seq
        if values[list(COLUMNS).index("status")] in terminal:
            values[_RESPONSE] = None
        held.append(tuple(values))
    return held


def merge_legacy(store: Store, out: Path, windows: list[SpecWindow]) -> None:
    """A job folder from before shards shipped their rows kept each shard's checkpoint (and
    artifacts) in DIR/shards/K: fold them into the job's once, then remove the folder."""
    names = ", ".join(c for c in COLUMNS if c != "seq")
    conn = store.db.conn
    for k, window in enumerate(windows):
        folder = out / "shards" / f"{k:04d}"
        path = checkpoint_path(folder)
        if not path.exists():
            continue
        conn.execute("ATTACH DATABASE ? AS shard", [str(path)])
        try:
            with conn:
                conn.execute(
                    f"INSERT OR REPLACE INTO rows (seq, {names}) "
                    f"SELECT seq + ?, {names} FROM shard.rows",
                    [window.first_seq],
                )
                # status reads the totals, not the rows; a resume the blocks
                store.add_totals_of("shard.rows", window.first_seq)
        except sqlite3.OperationalError:
            pass  # a shard that never got as far as its schema has nothing to merge
        finally:
            conn.execute("DETACH DATABASE shard")
        files = folder / ARTIFACTS_DIR
        if files.is_dir():
            (out / ARTIFACTS_DIR).mkdir(parents=True, exist_ok=True)
            for f in files.iterdir():
                if f.is_file() and not f.name.startswith("."):
                    os.replace(f, out / ARTIFACTS_DIR / f.name)
        for leftover in sorted(folder.rglob("*"), reverse=True):
            with contextlib.suppress(OSError):
                leftover.unlink() if leftover.is_file() else leftover.rmdir()
        with contextlib.suppress(OSError):
            folder.rmdir()
