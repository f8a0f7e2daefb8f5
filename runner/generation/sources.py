"""Input tables for `generate`: files streamed in record batches, or tables already in memory.

A source can be read more than once (once to build the requests, once to assemble the
result), and a file is never held whole: Parquet, JSONL and CSV are read a batch at a time
by pyarrow's streaming readers, from a local path or an object-storage URL (s3://, gs://,
abfs://; ranged reads through storage.py). In memory: a `pyarrow.Table`, a list of dicts,
and, when installed, a pandas or Polars DataFrame or an HF `datasets.Dataset` (imported only
if given).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..errors import UsageError

__all__ = ["Source", "open_source"]

BATCH_ROWS = 1024


@dataclass
class Source:
    """A table read in batches: its schema, a description, and a way to read it again."""

    schema: pa.Schema
    label: str
    _open: Callable[[int], Iterator[pa.RecordBatch]]

    def batches(self, size: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        try:
            yield from self._open(size)
        except (pa.ArrowException, OSError) as exc:
            raise UsageError(f"cannot read {self.label}: {exc}") from exc


def _parquet(path: Path | str) -> Source:
    """A local file, or an object in a bucket: its footer, then a row group at a time, each
    a ranged read (storage.open_random); the object is never downloaded whole."""
    import pyarrow.parquet as pq

    try:
        with _opened(path, random=True) as f:
            schema = pq.read_schema(f)
    except (pa.ArrowException, OSError) as exc:
        raise UsageError(f"{path} is not a readable Parquet file: {exc}") from exc

    def read(size: int) -> Iterator[pa.RecordBatch]:
        with (
            _opened(path, random=True) as f,
            pq.ParquetFile(f, buffer_size=1 << 20, pre_buffer=False) as pf,
        ):
            yield from pf.iter_batches(batch_size=size)

    return Source(schema, str(path), read)


def _opened(path: Path | str, *, random: bool) -> Any:
    """The bytes of a local file or of an object (storage.py, imported only for a URL)."""
    if isinstance(path, str):
        from .. import storage

        try:
            return storage.open_random(path) if random else storage.open_stream(path)
        except storage.StorageError as exc:
            raise UsageError(str(exc)) from exc
    return pa.OSFile(str(path))


def _streamed(path: Path | str, opener: Callable[[Any], Any]) -> Source:
    """JSONL and CSV: types come from the first block (1 MB), as pyarrow's readers infer.
    An object in a bucket is read as a stream of ranged reads, never downloaded whole."""
    try:
        with _opened(path, random=False) as f:
            schema = opener(f).schema
    except (pa.ArrowException, OSError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from exc

    def read(size: int) -> Iterator[pa.RecordBatch]:
        with _opened(path, random=False) as f:
            for batch in opener(f):
                for start in range(0, batch.num_rows, size):
                    yield batch.slice(start, size)

    return Source(schema, str(path), read)


def _open_jsonl(f: Any) -> Any:
    import pyarrow.json as pj

    return pj.open_json(f, read_options=pj.ReadOptions(block_size=1 << 20))


def _open_csv(f: Any) -> Any:
    import pyarrow.csv as pc

    return pc.open_csv(f, read_options=pc.ReadOptions(block_size=1 << 20))


def _file(location: Path | str) -> Source:
    """A Source for a local path or a URL, by its extension."""
    name = location.name if isinstance(location, Path) else location.rsplit("/", 1)[-1]
    suffix = Path(name).suffix.lower()
    if suffix in (".parquet", ".pq"):
        return _parquet(location)
    if suffix in (".jsonl", ".ndjson"):
        return _streamed(location, _open_jsonl)
    if suffix == ".csv":
        return _streamed(location, _open_csv)
    raise UsageError(f"cannot tell the format of {name}: use .parquet, .jsonl or .csv")


def _table(table: pa.Table, label: str) -> Source:
    def read(size: int) -> Iterator[pa.RecordBatch]:
        yield from table.to_batches(max_chunksize=size)

    return Source(table.schema, label, read)


def open_source(source: Any) -> Source:
    """A `Source` for anything `generate` takes; a clear UsageError for anything else."""
    if isinstance(source, str | Path):
        from ..storage import is_url, normalize

        if is_url(source):  # s3://, gs://, abfs://
            return _file(normalize(source))
        path = Path(source)
        if not path.is_file():
            raise UsageError(f"input file not found: {path}")
        return _file(path)
    if isinstance(source, pa.Table):
        return _table(source, "the input table")
    if isinstance(source, pa.RecordBatch):
        return _table(pa.Table.from_batches([source]), "the input batch")
    if isinstance(source, list):
        if not all(isinstance(r, dict) for r in source):
            bad = next(i for i, r in enumerate(source) if not isinstance(r, dict))
            raise UsageError(f"the input list must hold dicts; row {bad} is {type(source[bad])}")
        try:
            return _table(pa.Table.from_pylist(source), "the input rows")
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            raise UsageError(
                f"the input rows do not form a table: {_culprit(source, exc)}"
            ) from exc
    return _table(_foreign_table(source), f"the input {type(source).__name__}")


def _culprit(rows: list[dict[str, Any]], exc: Exception) -> str:
    """Name the first row and column whose value does not fit the column's earlier values."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    for name in names:
        first: type | None = None
        for i, row in enumerate(rows):
            value = row.get(name)
            if value is None:
                continue
            if first is None:
                first = type(value)
            elif not _same_kind(first, type(value)):
                return (
                    f"row {i}, column {name!r}: {type(value).__name__} {value!r:.60} where earlier "
                    f"rows hold {first.__name__}; give the column one type"
                )
    return str(exc)


def _same_kind(a: type, b: type) -> bool:
    numbers = (int, float)
    return a is b or (a in numbers and b in numbers and bool not in (a, b))


def _foreign_table(source: Any) -> pa.Table:
    """pandas, Polars and HF datasets, without importing any of them unless given one."""
    module = type(source).__module__.split(".")[0]
    try:
        if module == "pandas":
            return pa.Table.from_pandas(source, preserve_index=False)
        if module == "datasets" and hasattr(source, "with_format"):
            table = source.with_format("arrow")[:]  # honours select/shuffle/filter indices
            return table if isinstance(table, pa.Table) else pa.table(table)
        if module == "polars" and hasattr(source, "to_arrow"):
            return pa.table(source.to_arrow())
        if hasattr(source, "__arrow_c_stream__"):
            return pa.table(source)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise UsageError(f"cannot read the input {type(source).__name__}: {exc}") from exc
    raise UsageError(
        "source must be a path (.parquet, .jsonl, .csv), a pyarrow.Table, a list of dicts, "
        f"a pandas/Polars DataFrame or a datasets.Dataset; got {type(source).__name__}"
    )
