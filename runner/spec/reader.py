"""Stream a spec file (JSONL or Parquet) as batches of rows, never loading it whole.

JSONL is split from fixed-size chunks and Parquet read in record batches; each data row
becomes exactly one item (rows.py), in file order. ``seq`` counts data rows from 0 (blank
lines are not rows); the checkpoint keys on it, so it depends only on the file's bytes.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from ..storage import is_url
from .rows import InvalidRow, Request, Rows, SpecDefaults, SpecError, Taken

__all__ = [
    "MAX_LINE_BYTES",
    "SpecWindow",
    "count_lines",
    "jsonl_lines",
    "open_spec",
    "read_spec",
    "spec_fingerprint",
    "window_digest",
]

MAX_LINE_BYTES = 16 * 1024 * 1024
_CHUNK = 1 << 20
# A resume mark every this many bytes of an object in a bucket (count_lines): a resume
# reads at most this much of what is done before its first pending row.
_MARK_BYTES = 8 << 20
_BOM = b"\xef\xbb\xbf"
_FORMATS = dict.fromkeys(("jsonl", "json", "ndjson"), "jsonl") | dict.fromkeys(
    ("parquet", "pq"), "parquet"
)
_META_COLUMNS = ("custom_id", "url", "method")


_NO_DEFAULTS = SpecDefaults()


@dataclass(frozen=True, slots=True)
class SpecWindow:
    """A part of a spec by position, read in place (a shard of a job, shards.py).

    JSONL: the bytes [start, end), which begin at physical line `first_line`; Parquet: the
    row groups [start, end). `first_seq` is the spec-wide seq of the window's first row.
    Rows read through a window keep their spec-wide line numbers (so derived custom_ids and
    error lines are the spec's) but count `seq` from 0: a shard's checkpoint is a job of
    `rows` rows. `digest` (`window_digest`) lets a shard check that the spec its node reads
    is the one the job was planned on, reading its window alone.
    """

    start: int
    end: int
    first_seq: int
    first_line: int
    rows: int
    digest: str | None = None


class _Slice:
    """Reads at most `size` bytes of a file from where it stands."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self._f, self._left = f, size

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if n < 0 else min(n, self._left)
        data = self._f.read(n)
        self._left -= len(data)
        return data


def open_spec(path: Path) -> IO[bytes]:
    """The spec's bytes: a local file, or an object read in ranges (storage.py) for a URL.

    Either seeks, so a shard's window and Parquet's footer are ranged reads, never the
    whole object.
    """
    if is_url(path):
        from .. import storage  # pyarrow.fs only when a URL is used

        try:
            opened: IO[bytes] = storage.open_random(path)
            return opened
        except storage.StorageError as exc:
            raise SpecError(str(exc)) from exc
    try:
        return path.open("rb")
    except OSError as exc:
        raise SpecError(f"cannot read spec {path}: {exc.strerror or exc}") from exc


def spec_fingerprint(path: Path, known: Path | None = None) -> str:
    """sha256 of the file's bytes, streamed, so a resume can tell whether the spec changed.

    An object in a bucket is known by its size and ETag instead (storage.object_tag): one
    HEAD request rather than reading the whole object before the first row is sent.

    `known` (a job's spec.identity) keeps a local file's digest beside its size, mtime and
    inode as they were before it was read: a resume whose file still has them takes the
    digest from there instead of reading gigabytes again (1.2 s for ten million rows).
    A file written since has another mtime, and is read.
    """
    if is_url(path):
        from .. import storage

        try:
            tag = storage.object_tag(path)
        except storage.StorageError as exc:
            raise SpecError(str(exc)) from exc
        if tag is not None:
            return hashlib.sha256(f"object:{tag}".encode()).hexdigest()
    if known is None:
        return _digest(path)
    try:
        st = os.stat(path)  # the version before the read: a write during it changes it
    except OSError:
        return _digest(path)
    version = _local_version(st)
    try:
        saved = known.read_text(encoding="utf-8").split()
    except OSError:
        saved = []
    if len(saved) == 2 and saved[0] == version:
        return saved[1]
    digest = _digest(path)
    # A file written within the clock tick of its version could be written again with the
    # same size and mtime: one as new as two seconds is read at every start (git does the
    # same with files as new as its index).
    if known.parent.is_dir() and time.time_ns() - st.st_mtime_ns > 2_000_000_000:
        _write_whole(known, [version, digest])
    return digest


def _digest(path: Path) -> str:
    try:
        with open_spec(path) as f:
            return hashlib.file_digest(f, "sha256").hexdigest()  # type: ignore[arg-type]
    except OSError as exc:
        raise SpecError(f"cannot read spec {path}: {exc.strerror or exc}") from exc


def _local_version(st: os.stat_result) -> str:
    return f"file:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def _version_now(path: Path) -> str | None:
    """The spec's version as it is now: an object's size and ETag, a file's size, mtime
    and inode; None if it cannot be told."""
    if is_url(path):
        from .. import storage

        return storage.object_tag(path)
    try:
        return _local_version(os.stat(path))
    except OSError:
        return None


def _write_whole(path: Path, lines: list[str]) -> None:
    """Written whole or not at all: a reader finds the old file, the new one, or none."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)


def window_digest(path: Path, window: SpecWindow) -> str:
    """sha256 of the bytes a window covers: a JSONL window's range, or the column chunks of
    a Parquet window's row groups; ranged reads, never the whole spec."""
    try:
        with open_spec(path) as f:
            start, end = window.start, window.end
            if path.suffix.lower() in (".parquet", ".pq"):
                start, end = _row_groups_span(f, window)
            f.seek(start)
            h = hashlib.sha256()
            left = end - start
            while left > 0 and (chunk := f.read(min(_CHUNK, left))):
                h.update(chunk)
                left -= len(chunk)
            return h.hexdigest()
    except OSError as exc:
        raise SpecError(f"cannot read spec {path}: {exc.strerror or exc}") from exc


def _row_groups_span(f: IO[bytes], window: SpecWindow) -> tuple[int, int]:
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(f).metadata
    lo, hi = sys.maxsize, 0
    for g in range(window.start, window.end):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            col = group.column(c)
            first = col.data_page_offset
            if col.has_dictionary_page and col.dictionary_page_offset:
                first = min(first, col.dictionary_page_offset)
            lo, hi = min(lo, first), max(hi, first + col.total_compressed_size)
    return (lo, hi) if hi > lo else (0, 0)


def count_lines(path: Path, marks: Path | None = None, *, every: int = _MARK_BYTES) -> int:
    """Non-blank lines of a JSONL spec, split but not parsed.

    With `marks`, the count also leaves where lines start every `every` bytes in that
    file (seq, byte offset, lines before), so a resume starts reading at the last mark
    before its first pending row instead of at byte 0 (`read_spec`).
    """
    n = 0
    found: list[tuple[int, int, int]] = []
    tag = None
    with open_spec(path) as f:
        if marks is not None:  # the version counted, from the same open
            if is_url(path):
                from .. import storage

                tag = storage.tag_of(f)  # type: ignore[arg-type]
            else:
                tag = _local_version(os.fstat(f.fileno()))
        offset = len(_BOM) if f.read(len(_BOM)) == _BOM else 0
        f.seek(0)
        due = every
        for lineno, raw in jsonl_lines(f, MAX_LINE_BYTES):
            if offset >= due:
                found.append((n, offset, lineno - 1))
                due = offset + every
            if isinstance(raw, int):
                n += 1
                offset += raw + 1
            else:
                n += bool(raw) and not raw.isspace()
                offset += len(raw) + 1
    if marks is not None and tag is not None:
        _save_marks(tag, marks, found)
    return n


def _save_marks(tag: str, marks: Path, found: list[tuple[int, int, int]]) -> None:
    """The marks, after the spec's version: marks of another version are ignored.
    Without them a resume reads from the start, as before."""
    _write_whole(marks, [tag, *(f"{seq} {offset} {line}" for seq, offset, line in found)])


def _done_prefix(skip: bytes | bytearray) -> int:
    """How many rows from the first that `skip` holds without a gap."""
    head = len(skip) - len(bytes(skip).lstrip(b"\xff"))  # bytes whose 8 rows are all done
    done = head * 8
    if head < len(skip):
        byte = skip[head]
        while byte & 1:
            done, byte = done + 1, byte >> 1
    return done


def _resume_mark(path: Path, marks: Path, skip: bytes | bytearray) -> tuple[int, int, int] | None:
    """The last mark at or before the first row `skip` does not hold: where a resume
    starts reading. None: read from the start."""
    try:
        lines = marks.read_text(encoding="utf-8").split()
    except OSError:
        return None
    done = _done_prefix(skip)
    best = None
    if not lines or lines[0] != _version_now(path):
        return None
    for k in range(1, len(lines) - 2, 3):
        seq, offset, line = int(lines[k]), int(lines[k + 1]), int(lines[k + 2])
        if seq > done:
            break
        best = (seq, offset, line)
    return best


def jsonl_lines(
    f: IO[bytes] | _Slice, cap: int, chunk_size: int = _CHUNK
) -> Iterator[tuple[int, bytes | int]]:
    """Yield ``(line number, bytes)`` per physical line, splitting fixed-size chunks.

    A line longer than ``cap`` is yielded as its length instead: its bytes are dropped as they
    are read, so a runaway line costs no more memory than the cap. A leading BOM is dropped.
    """
    lineno = 0
    head: list[bytes] = []  # pieces of the line still open at the end of the previous chunk
    head_len = 0
    skipping = 0  # > 0 while dropping an over-long line: its length so far
    chunk = f.read(chunk_size)
    if chunk.startswith(_BOM):
        chunk = chunk[len(_BOM) :] or f.read(chunk_size)
    while chunk:
        parts = chunk.split(b"\n")
        tail = parts.pop()
        if parts:
            first = parts[0]
            lineno += 1
            if skipping:
                yield lineno, skipping + len(first)
                skipping = 0
            else:
                if head:
                    head.append(first)
                    first = b"".join(head)
                    head, head_len = [], 0
                yield lineno, first if len(first) <= cap else len(first)
            for k in range(1, len(parts)):
                part = parts[k]
                lineno += 1
                yield lineno, part if len(part) <= cap else len(part)
        if skipping:
            skipping += len(tail)
        elif head_len + len(tail) > cap:
            skipping, head, head_len = head_len + len(tail), [], 0
        elif tail:
            head.append(tail)
            head_len += len(tail)
        chunk = f.read(chunk_size)
    if skipping:
        yield lineno + 1, skipping
    elif head:
        yield lineno + 1, b"".join(head)


def _bad_json(seq: int, line: int, raw: bytes, exc: orjson.JSONDecodeError) -> InvalidRow:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        where = f"byte 0x{raw[bad.start]:02x} at position {bad.start + 1}"
        message = f"not valid UTF-8 ({where}): save the spec as UTF-8"
        return InvalidRow(seq, line, None, None, message)
    return InvalidRow(seq, line, None, None, f"invalid JSON at column {exc.colno}: {exc.msg}")


def _skipped(skip: bytes | bytearray | None) -> Callable[[int], bool]:
    """`skip`'s test for one seq: its bit is set (rows past its end are not skipped)."""
    if not skip:
        return lambda seq: False
    bits, end = skip, len(skip) * 8
    return lambda seq: seq < end and bool(bits[seq >> 3] & (1 << (seq & 7)))


def _read_jsonl(
    path: Path,
    rows: Rows,
    batch_size: int,
    cap: int,
    skip: bytes | bytearray | None,
    window: SpecWindow | None = None,
    start: tuple[int, int, int] | None = None,
) -> Iterator[list[Request | InvalidRow]]:
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    bits = skip or b""
    end = len(bits) * 8  # rows from here on are not skipped
    batch: list[Request | InvalidRow] = []
    seq = 0
    with open_spec(path) as f:
        source: IO[bytes] | _Slice = f
        first_line = 0
        if window is not None:
            f.seek(window.start)
            source, first_line = _Slice(f, window.end - window.start), window.first_line - 1
        elif start is not None:  # a resume, from a mark before its first pending row
            seq, offset, first_line = start
            f.seek(offset)
        for line, raw in jsonl_lines(source, cap):
            line += first_line
            item: Request | InvalidRow
            if type(raw) is bytes and (not raw or raw.isspace()):
                continue  # a blank line is not a row
            # Done in an earlier run: split, never parsed (inline: this runs a million times).
            if seq < end and bits[seq >> 3] >> (seq & 7) & 1:
                seq += 1
                continue
            if isinstance(raw, int):
                problem = f"line is {raw:,} bytes, over the {cap:,}-byte cap"
                item = InvalidRow(seq, line, None, None, f"{problem}: shorten or split the request")
            else:
                try:
                    obj = loads(raw)
                except decode_error as exc:
                    item = _bad_json(seq, line, raw, exc)
                else:
                    item = rows.from_object(seq, line, obj)
            batch.append(item)
            seq += 1
            if len(batch) >= batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def _drop_nulls(value: Any) -> Any:
    """Undo struct unification: Arrow gives every row every key of a struct, absent ones null."""
    if type(value) is dict:
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if type(value) is list:
        return [_drop_nulls(v) for v in value]
    return value


def _read_parquet(
    path: Path,
    rows: Rows,
    batch_size: int,
    skip: bytes | bytearray | None,
    window: SpecWindow | None = None,
) -> Iterator[list[Request | InvalidRow]]:
    import pyarrow.parquet as pq  # deferred: slow to import, and most specs are JSONL

    skipped = _skipped(skip)
    batch: list[Request | InvalidRow] = []
    seq = 0
    # A buffered stream, not pre-buffering: pages are read as batches need them, so a spec in one
    # huge row group does not land in memory whole.
    with (
        open_spec(path) as source,
        pq.ParquetFile(source, buffer_size=_CHUNK, pre_buffer=False) as pf,
    ):
        names = pf.schema_arrow.names
        has_body = "body" in names
        if has_body:  # other columns (notes, labels) are not decoded at all
            names = [n for n in names if n in _META_COLUMNS or n == "body"]
        body_names = [n for n in names if n not in _META_COLUMNS]
        groups = None if window is None else list(range(window.start, window.end))
        first_line = 1 if window is None else window.first_seq + 1
        if window is None and skip:
            # A resume: row groups whose rows are all done are not read at all (ranged
            # reads of an object in a bucket; nothing to decode for a local file).
            done, meta = _done_prefix(skip), pf.metadata
            start = 0
            for g in range(meta.num_row_groups):
                rows_in = meta.row_group(g).num_rows
                if start + rows_in > done:
                    break
                start += rows_in
            else:
                g = meta.num_row_groups
            if g:
                groups, seq = list(range(g, meta.num_row_groups)), start
        for record_batch in _record_batches(pf, path, names, batch_size, groups):
            n = record_batch.num_rows
            cols = {name: record_batch.column(name).to_pylist() for name in names}
            none: list[Any] = [None] * n
            ids, urls, methods = (cols.get(name, none) for name in _META_COLUMNS)
            if has_body:
                bodies = [_drop_nulls(b) if type(b) is dict else b for b in cols["body"]]
            else:  # short form: the other columns are the body; a null cell is an absent key
                values = (
                    zip(*(cols[k] for k in body_names), strict=True) if body_names else [()] * n
                )
                bodies = [_drop_nulls(dict(zip(body_names, row, strict=True))) for row in values]
            for k in range(n):
                if skipped(seq):
                    seq += 1
                    continue
                item = rows.build(
                    seq, seq + first_line, ids[k], urls[k], methods[k], bodies[k], True
                )
                batch.append(item)
                seq += 1
                if len(batch) >= batch_size:
                    yield batch
                    batch = []
    if batch:
        yield batch


def _record_batches(
    pf: Any, path: Path, columns: list[str], batch_size: int, groups: list[int] | None = None
) -> Iterator[Any]:
    """``iter_batches``, with a file that breaks part-way through reported as a SpecError."""
    import pyarrow as pa

    batches = pf.iter_batches(batch_size=batch_size, columns=columns, row_groups=groups)
    rows = 0
    while True:
        try:
            record_batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            raise SpecError(f"{path} is damaged after row {rows:,}: {exc}") from exc
        rows += record_batch.num_rows
        yield record_batch


def _check_parquet(path: Path) -> None:
    """Read the footer now, so a file that is not Parquet fails before the run starts."""
    import pyarrow.parquet as pq

    try:
        with open_spec(path) as f:
            pq.read_metadata(f)
    except SpecError:
        raise
    except Exception as exc:  # pyarrow raises ArrowInvalid or OSError for the same causes
        raise SpecError(
            f"{path} is not a readable Parquet file ({exc}): if it is JSONL, name it .jsonl "
            "or pass --format jsonl"
        ) from exc


def _spec_format(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        kind = _FORMATS.get(fmt.lower().lstrip("."))
        if kind is None:
            raise SpecError(f"unknown spec format {fmt!r}: use jsonl or parquet")
        return kind
    kind = _FORMATS.get(path.suffix.lower().lstrip("."))
    if kind is None:
        raise SpecError(
            f"cannot tell the format of {path.name} from its extension: name it .jsonl or "
            ".parquet, or pass --format jsonl|parquet"
        )
    return kind


def read_spec(
    path: Path,
    defaults: SpecDefaults = _NO_DEFAULTS,
    *,
    batch_size: int = 1024,
    fmt: str | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
    skip: bytes | bytearray | None = None,
    taken: Taken | None = None,
    window: SpecWindow | None = None,
    marks: Path | None = None,
) -> Iterator[list[Request | InvalidRow]]:
    """Stream the spec as lists of up to ``batch_size`` items, one per data row, in file order.

    File-level problems raise ``SpecError`` here, before the first batch, so a run that cannot
    read its spec stops before anything is sent.

    ``skip`` is a bitmap of seqs (bit ``seq & 7`` of byte ``seq >> 3``) to leave out: rows a
    resume has done already. Their lines are split and counted but never parsed, so a resume
    reaches its first pending row of a million in a fraction of a second. They claimed their
    custom_ids when they were read first, so ``taken`` (the checkpoint) says whether an id
    belongs to one of them: a later row that repeats it is still a duplicate.

    ``marks`` (written by ``count_lines``) lets a resume seek past
    the done rows before its first pending one instead of reading them; Parquet skips whole
    row groups of done rows by its footer alone.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    path = Path(path)
    if not is_url(path) and not path.is_file():
        raise SpecError(
            f"spec file not found: {path}" + (" (it is a directory)" if path.is_dir() else "")
        )
    kind = _spec_format(path, fmt)
    rows = Rows(defaults, taken)
    if kind == "jsonl":
        start = None
        if marks is not None and skip and window is None:
            start = _resume_mark(path, marks, skip)
        return _read_jsonl(path, rows, batch_size, max_line_bytes, skip, window, start)
    _check_parquet(path)
    return _read_parquet(path, rows, batch_size, skip, window)
