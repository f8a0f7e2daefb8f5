"""The checkpoint's WAL stays bounded while a job commits beside its checkpoints.

A passive checkpoint never starts the WAL over, and under a steady stream of commits the
moment when a commit could (every frame copied, no reader in the WAL) hardly comes: a 10M
row job's WAL reached 2.25 GB. Here a thread commits without pause, another reads as the
results writer does, and the checkpoints run beside them as the job runs them.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from runner.outcome import Outcome
from runner.store import Store
from runner.store import checkpoint as checkpoint_module

CAP = 64  # frames


def _wal_frames(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    size = wal.stat().st_size if wal.exists() else 0
    return max(size - 32, 0) // (4096 + 24)  # a 32-byte header, then 24 bytes a frame


def test_the_wal_is_started_over_under_steady_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoint_module, "WAL_RESTART_FRAMES", CAP)
    path = tmp_path / "checkpoint.sqlite"
    store = Store(path)
    store.defer_checkpoints(True)
    stop = threading.Event()
    committed = [0]
    body = "x" * 3000  # about a page a row

    def commit() -> None:
        writer = Store(path)  # the job's writer: a connection of its own
        writer.defer_checkpoints(True)
        seq = 0
        while not stop.is_set():
            writer.record([
                Outcome(seq=s, custom_id=f"c{s}", status="succeeded", response=body)
                for s in range(seq, seq + 20)
            ])  # fmt: skip
            seq += 20
            committed[0] = seq
            time.sleep(0.002)
        writer.close()

    def read() -> None:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        while not stop.is_set():
            conn.execute("SELECT COUNT(*) FROM rows WHERE seq >= ?", (committed[0] - 200,))
            time.sleep(0.01)
        conn.close()

    threads = [threading.Thread(target=commit), threading.Thread(target=read)]
    for t in threads:
        t.start()
    largest = 0
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            largest = max(largest, _wal_frames(path))
            store.checkpoint_wal()  # a job's run once a second, beside its commits
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT COUNT(*) FROM rows").fetchone()[0]
    assert rows == committed[0] > 50 * CAP  # the commits went on, and all are kept
    # The WAL grows past the cap by what is committed between two checkpoints, then goes
    # back to nothing; without the restart it held more frames than there were rows.
    assert largest < rows // 4, (largest, rows)
