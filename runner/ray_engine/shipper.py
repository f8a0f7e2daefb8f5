"""A shard's side of the inbox: its checkpoint on its own node, and what it ships from it.

The shard runs this runner's own engine over a checkpoint in node-local space, as any job
does; it never opens the job's folder. Triggers on that checkpoint's `rows` log every seq
a commit writes or deletes (`ship_log`), and the shipper, a thread beside the engine, reads
the log from a connection of its own (WAL lets it read while the writer commits) every
`SHIP_EVERY` seconds and sends what changed to the driver's inbox, a batch at a time, each
acknowledged before the next. So the job's checkpoint trails a shard's by a fraction of a
second, and a node lost mid-job costs at most that: the rows the driver holds are not sent
again when the shard starts over elsewhere (`prepare` seeds its new checkpoint with them).

A shard that starts again on the same node finds its checkpoint there and ships its log
from the start: the driver's copy is replaced by the same rows, nothing is sent twice.

Artifacts of a shipped row go with it: uploaded from the node to --results-to when the job
has one, else sent in the batch (an upload that fails is sent instead). Once the inbox has
them they are deleted from the node, whose disk then holds only what is in flight.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from ..lifecycle import checkpoint_path
from ..outcome import COLUMNS
from ..store import TERMINAL, Store
from .inbox import Batch

__all__ = ["SHIP_EVERY", "Shipper", "prepare"]

SHIP_EVERY = 0.25  # seconds between a shard's batches
MAX_ROWS = 2000  # rows per batch
MAX_BYTES = 16 << 20  # about the bytes of a batch (answers and artifacts)

_KEY_COLUMNS = ("fingerprint", "position", "label", "state", "reason", "advice", "updated_at")
_LOG = """
CREATE TABLE IF NOT EXISTS ship_log (n INTEGER PRIMARY KEY AUTOINCREMENT, seq INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS ship_insert AFTER INSERT ON rows
    BEGIN INSERT INTO ship_log (seq) VALUES (NEW.seq); END;
CREATE TRIGGER IF NOT EXISTS ship_update AFTER UPDATE ON rows
    BEGIN INSERT INTO ship_log (seq) VALUES (NEW.seq); END;
CREATE TRIGGER IF NOT EXISTS ship_delete AFTER DELETE ON rows
    BEGIN INSERT INTO ship_log (seq) VALUES (OLD.seq); END;
"""


def prepare(out: Path, held: list[tuple[Any, ...]]) -> None:
    """Create the shard's checkpoint in `out`, holding the rows the driver `held` (which
    are not logged: the driver has them). Built aside and renamed into place, so a shard
    killed while seeding leaves no half checkpoint to be taken for a whole one."""
    part = out.with_name(out.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    store = Store(checkpoint_path(part))
    try:
        conn = store.db.conn
        names = ", ".join(COLUMNS)
        marks = ", ".join("?" * len(COLUMNS))
        with conn:
            conn.executemany(f"INSERT OR REPLACE INTO rows ({names}) VALUES ({marks})", held)
            store.add_totals_of("rows")  # a fresh checkpoint: its totals are these rows'
        conn.executescript(_LOG)
    finally:
        store.close()
    shutil.rmtree(out, ignore_errors=True)
    part.rename(out)


class Shipper:
    """Ships the shard's committed rows (and their artifacts) with `send`, which returns
    once the inbox has the batch."""

    def __init__(
        self,
        out: Path,
        shard: int,
        send: Callable[[Batch], None],
        results_to: str | None = None,
        every: float = SHIP_EVERY,
    ) -> None:
        self.out, self.shard, self._send = out, shard, send
        self._results_to, self._every = results_to, every
        self._conn = sqlite3.connect(
            str(checkpoint_path(out)), check_same_thread=False, timeout=5.0
        )
        self._after = 0  # the last log entry shipped: a new attempt ships the whole log
        self._keys: list[dict[str, Any]] | None = None
        self.shipped = 0
        cols = ", ".join(f"r.{c}" for c in COLUMNS)
        self._sql = (
            f"SELECT l.n, l.seq, r.seq IS NOT NULL, {cols} FROM ship_log l "
            "LEFT JOIN rows r ON r.seq = l.seq WHERE l.n > ? ORDER BY l.n LIMIT ?"
        )

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Ship every `every` seconds while the body runs, and everything left after it."""
        stop = threading.Event()
        failure: list[BaseException] = []

        def loop() -> None:
            try:
                while not stop.wait(self._every):
                    self.ship()
            except BaseException as exc:  # reported by the shard once its job has ended
                failure.append(exc)

        thread = threading.Thread(target=loop, name=f"shipper-{self.shard}", daemon=True)
        thread.start()
        try:
            yield
        except BaseException:
            stop.set()
            thread.join()
            with contextlib.suppress(Exception):  # what it committed is kept if it can be
                self.ship()
            raise
        stop.set()
        thread.join()
        if failure:
            raise failure[0]
        self.ship()

    def ship(self) -> None:
        """Send everything committed since the last batch, a batch at a time."""
        while True:
            batch, last = self._next()
            if not batch:
                return
            self._send(batch)
            self._after = last
            self.shipped += len(batch.rows)
            self._forget(batch)

    def _next(self) -> tuple[Batch, int]:
        batch = Batch(self.shard)
        entries = self._conn.execute(self._sql, [self._after, MAX_ROWS]).fetchall()
        last, seen, size = self._after, set(), 0
        for n, seq, present, *row in entries:
            last = n
            if seq in seen:
                continue
            seen.add(seq)
            if not present:
                batch.gone.append(seq)
                continue
            values = tuple(row)
            batch.rows.append(values)
            size += sum(len(v) for v in values if isinstance(v, str))
            size += self._artifacts(values, batch)
            if size > MAX_BYTES:
                break
        keys = [
            dict(zip(_KEY_COLUMNS, r, strict=True))
            for r in self._conn.execute(f"SELECT {', '.join(_KEY_COLUMNS)} FROM keys")
        ]
        if keys != self._keys and (batch or keys):
            batch.keys = self._keys = keys
        return batch, last

    def _artifacts(self, row: tuple[Any, ...], batch: Batch) -> int:
        """Upload (or add to the batch) the files of a finished row; the bytes added."""
        record = dict(zip(COLUMNS, row, strict=True))
        if record["status"] not in TERMINAL or not record["artifacts"]:
            return 0
        added = 0
        for item in orjson.loads(record["artifacts"]):
            rel = item.get("path") if isinstance(item, dict) else None
            if not rel:
                continue  # not downloaded (--no-download): only its URL is recorded
            for name in (rel, rel + ".json"):  # the file and its provenance sidecar
                path = self.out / name
                if not path.is_file():
                    continue  # shipped by an earlier attempt, which the inbox took
                if self._upload(path, name):
                    continue
                data = path.read_bytes()
                batch.files[name] = data
                added += len(data)
        return added

    def _upload(self, path: Path, name: str) -> bool:
        if self._results_to is None:
            return False
        from .. import storage

        try:
            storage.upload(path, storage.join_url(self._results_to, name))
        except storage.StorageError:
            return False  # sent to the driver instead: its push at the end tries again
        return True

    def _forget(self, batch: Batch) -> None:
        """The inbox has the batch: the node needs no copy of its artifacts."""
        for row in batch.rows:
            record = dict(zip(COLUMNS, row, strict=True))
            if record["status"] not in TERMINAL or not record["artifacts"]:
                continue
            for item in orjson.loads(record["artifacts"]):
                rel = item.get("path") if isinstance(item, dict) else None
                if rel:
                    for name in (rel, rel + ".json"):
                        with contextlib.suppress(OSError):
                            os.unlink(self.out / name)

    def close(self) -> None:
        self._conn.close()
