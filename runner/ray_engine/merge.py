"""Fold the shards' checkpoints into the job's own, so every reader of a job folder
(`runner status`, `export`, `report`, results.parquet) sees one job of the whole spec.

A shard counts its rows from 0; in the job's checkpoint a row's seq is the spec's
(the shard's first seq added). A shard's rows replace the job's copy of them, so merging
again after a resume only brings the checkpoint up to date; only the shards write rows.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ..lifecycle import checkpoint_path
from ..outcome import COLUMNS
from ..spec import SpecWindow
from ..store import Store
from .plan import shard_dir

__all__ = ["merge_shards"]


def merge_shards(store: Store, out: Path, windows: list[SpecWindow]) -> None:
    """Copy every shard's rows and key states into `store` (one transaction per shard)."""
    cols = [c for c in COLUMNS if c != "seq"]
    names = ", ".join(cols)
    conn = store.db.conn
    keys: dict[str, dict[str, object]] = {}
    for k, window in enumerate(windows):
        path = checkpoint_path(shard_dir(out, k))
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
                store.add_totals_of("shard.rows")  # status reads the totals, not the rows
            for row in conn.execute(
                "SELECT fingerprint, position, label, state, reason, advice, updated_at "
                "FROM shard.keys"
            ):
                state = dict(
                    zip(
                        ("fingerprint", "position", "label", "state", "reason", "advice",
                         "updated_at"),
                        row,
                        strict=True,
                    )
                )  # fmt: skip
                seen = keys.get(str(state["fingerprint"]))
                if seen is None or (state["state"] == "retired" and seen["state"] != "retired"):
                    keys[str(state["fingerprint"])] = state
        except sqlite3.OperationalError:
            pass  # a shard that never got as far as its schema has nothing to merge
        finally:
            conn.execute("DETACH DATABASE shard")
    if keys:
        store.record_keys(list(keys.values()))
