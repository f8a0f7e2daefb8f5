"""Checkpoint → results files: Parquet for datasets and analytics, JSONL in Batch-API form.

Both stream the store in chunks, so exporting a million rows holds one chunk in memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from .cost import NANO
from .errors import CheckpointError
from .heap import trim
from .store import FinishedRows, Store
from .store.opening import row_columns

__all__ = [
    "RESULT_SCHEMA",
    "FollowingResults",
    "write_results_jsonl",
    "write_results_parquet",
]

RESULT_SCHEMA = pa.schema(
    [
        ("custom_id", pa.string()),
        ("line", pa.int64()),
        ("status", pa.string()),
        ("endpoint", pa.string()),
        ("model", pa.string()),
        ("response", pa.string()),
        ("error_code", pa.string()),
        ("error_message", pa.string()),
        ("http_status", pa.int64()),
        ("attempts", pa.int64()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("cached_tokens", pa.int64()),
        ("total_tokens", pa.int64()),
        ("images", pa.int64()),
        ("videos", pa.int64()),
        ("cost", pa.float64()),
        ("cost_nano", pa.int64()),
        ("latency_s", pa.float64()),
        ("started_at", pa.timestamp("ms", tz="UTC")),
        ("finished_at", pa.timestamp("ms", tz="UTC")),
        ("request_id", pa.string()),
        ("task_id", pa.string()),
        ("task_status", pa.string()),
        ("artifacts", pa.string()),
        # Every attempt of the row (a `runner retry` keeps the earlier ones): what it cost.
        ("cost_all_attempts", pa.float64()),
    ]
)


_STORED = [n for n in RESULT_SCHEMA.names if n not in ("cost", "cost_all_attempts")]

# The export was the peak memory of a million-row job (218 MB; the run itself stays near
# 100). Each chunk passes through Python objects (a tuple per row, a list per column)
# before it is Arrow, so chunks are small; and only the columns with few distinct values
# are dictionary-encoded, since an encoder over a million distinct responses held tens of
# MB for nothing. Same file size, and the export's own peak falls from ~80 MB to ~37 MB.
_CHUNK = 2048
_DICTIONARY = ["status", "endpoint", "model", "error_code", "task_status"]
# But a row group per chunk made the writer's metadata grow 8 KB a group (10 MB a million
# rows, and a 300 MB peak while the footer of ten million was written), and readers like
# large groups: chunks are held as Arrow until a group has 32 MB or 65,536 rows. No min/max
# statistics for the long texts: they were 4 KB of every group's footer for nothing.
_GROUP_BYTES = 32 << 20
_GROUP_ROWS = 1 << 16
_STATISTICS = [
    n for n in RESULT_SCHEMA.names if n not in ("response", "error_message", "artifacts")
]


def _give_back_memory() -> None:
    """Return what a written group freed. Arrow's allocator keeps freed pages for reuse,
    and so does glibc in an arena per thread: the file is written from whichever worker
    thread is free, and a million-row run held 50 MB more than it used."""
    pa.default_memory_pool().release_unused()
    trim()


def _table(chunk: list[tuple[Any, ...]], earlier: dict[int, tuple[int, int]]) -> pa.Table:
    seqs, *columns = (list(c) for c in zip(*chunk, strict=True))
    cols = dict(zip(_STORED, columns, strict=True))
    cols["cost"] = [None if v is None else v / NANO for v in cols["cost_nano"]]
    every = list(cols["cost_nano"])
    if earlier:
        # `attempts` counts every request the row was sent, over all its runs.
        for i, seq in enumerate(seqs):
            if seq in earlier:
                sent, cost = earlier[seq]
                cols["attempts"][i] = (cols["attempts"][i] or 0) + sent
                every[i] = (every[i] or 0) + cost
    cols["cost_all_attempts"] = [None if v is None else v / NANO for v in every]
    for name in ("started_at", "finished_at"):
        cols[name] = [None if v is None else int(v * 1000) for v in cols[name]]
    return pa.table(cols, schema=RESULT_SCHEMA)


@contextlib.contextmanager
def _results_file(path: Path, tmp: Path) -> Iterator[None]:
    """A failed write (disk full, read-only, a folder in the way) becomes a CheckpointError
    that says the results are safe, instead of a traceback; no temp file is left behind."""
    try:
        yield
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise CheckpointError(
            f"cannot write {path}: {exc}. Every result is safe in the checkpoint: fix the "
            "cause, then export again (`runner export OUT -o FILE`) or run the job again."
        ) from exc


class _ResultsFile:
    """results.parquet being written: a temp file beside it until `close` renames it."""

    def __init__(self, path: Path, earlier: dict[int, tuple[int, int]]) -> None:
        self.path, self.tmp = path, path.with_suffix(".parquet.tmp")
        self.earlier = earlier
        self.rows = 0
        self._group: list[pa.Table] = []
        self._group_bytes = self._group_rows = 0
        with self._failing():
            self._writer = pq.ParquetWriter(
                self.tmp, RESULT_SCHEMA, use_dictionary=_DICTIONARY, write_statistics=_STATISTICS
            )

    def write(self, chunk: list[tuple[Any, ...]]) -> None:
        """Rows as (seq, *stored columns), in spec order."""
        table = _table(chunk, self.earlier)
        self._group.append(table)
        self._group_bytes += table.nbytes
        self._group_rows += len(chunk)
        self.rows += len(chunk)
        if self._group_bytes >= _GROUP_BYTES or self._group_rows >= _GROUP_ROWS:
            self._flush()

    def close(self) -> int:
        self._flush()
        with self._failing():
            self._writer.close()
            self.tmp.replace(self.path)
        return self.rows

    def _flush(self) -> None:
        if not self._group:
            return
        group = pa.concat_tables(self._group)  # no copy: the chunks become one group
        self._group, self._group_bytes, self._group_rows = [], 0, 0
        with self._failing():
            self._writer.write_table(group, row_group_size=len(group))
        del group
        _give_back_memory()

    def abandon(self) -> None:
        with contextlib.suppress(OSError):
            self._writer.close()
            self.tmp.unlink(missing_ok=True)

    def _failing(self) -> contextlib.AbstractContextManager[None]:
        return _results_file(self.path, self.tmp)


def write_results_parquet(store: Store, path: Path) -> int:
    """Write every stored row to Parquet atomically (temp file, then rename)."""
    out = _ResultsFile(path, store.earlier_attempts())
    for chunk in store.iter_columns(_STORED, batch=_CHUNK):
        out.write(chunk)
    return out.close()


class FollowingResults:
    """results.parquet written while the job runs, so that its end waits only for the tail.

    At a million rows the export after the last answer took 8 s, a tenth of the job. Here
    the rows go to the file in spec order as soon as every row before them is final:
    `follow` writes what is ready, on a read-only connection of its own beside the job's
    writer (in the process `results_writer` starts beside the job). `close` writes the
    rest, whatever its status, and puts the file in place: the same file the export writes.

    Rows that an earlier run left open (async tasks polled again, rows a batch may still
    answer) may change in this run, so the file stops short of the first of them (`stop`)
    until `close`. A write that fails (disk full) stops the following; `close` then raises,
    and the job exports from the start instead.
    """

    def __init__(
        self,
        checkpoint: Path,
        path: Path,
        stop: int,
        earlier: dict[int, tuple[int, int]] | None = None,
    ) -> None:
        self._rows = FinishedRows(checkpoint)
        self._out = _ResultsFile(path, earlier or {})
        self._next = 0  # the first seq not in the file
        self._stop = stop
        self.failed = False

    @property
    def written(self) -> int:
        """Rows in the file so far."""
        return self._out.rows

    def follow(self) -> None:
        if self.failed:
            return
        end = self._rows.final_run(self._next, self._stop)
        try:
            self._write(end)
        except CheckpointError:
            self.failed = True

    def close(self) -> int:
        """Write the rest, whatever its status, and put the file in place."""
        try:
            if self.failed:
                raise CheckpointError(f"{self._out.path}: an earlier write failed")
            self._write(None)
            return self._out.close()
        finally:
            self._rows.close()

    def abandon(self) -> None:
        self._out.abandon()
        self._rows.close()

    def _write(self, stop: int | None) -> None:
        if stop is not None and stop <= self._next:
            return
        for chunk in row_columns(self._rows.conn, _STORED, _CHUNK, self._next, stop):
            self._out.write(chunk)
            self._next = chunk[-1][0] + 1


def batch_line(row: dict[str, Any]) -> dict[str, Any]:
    """One row in the provider Batch-API output shape."""
    line: dict[str, Any] = {"custom_id": row["custom_id"]}
    if row["status"] == "succeeded" and row.get("response"):
        line["response"] = {
            "status_code": row.get("http_status") or 200,
            "body": orjson.loads(row["response"]),
        }
    else:
        line["response"] = None
        line["error"] = {
            "code": row.get("error_code"),
            "message": row.get("error_message"),
            "status_code": row.get("http_status"),
        }
        if row.get("response"):
            # Billed but failed (e.g. content filter on output): keep what was returned.
            line["response"] = {
                "status_code": row.get("http_status") or 200,
                "body": orjson.loads(row["response"]),
            }
    return line


def write_results_jsonl(store: Store, path: Path) -> int:
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with _results_file(path, tmp):
        with tmp.open("wb") as f:
            for chunk in store.iter_rows():
                for row in chunk:
                    if row["status"] not in ("succeeded", "failed"):
                        continue
                    f.write(orjson.dumps(batch_line(row)) + b"\n")
                    n += 1
        tmp.replace(path)
    return n
