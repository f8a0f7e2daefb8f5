"""Cut a spec into shards by position, without copying it: byte ranges of whole lines for
JSONL, runs of row groups for Parquet. The plan is saved in the job folder, so a resume
runs the same shards whatever `--shards` says the second time."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import IO, Any

import orjson

from ..errors import UsageError
from ..spec import SpecWindow, open_spec, window_digest

__all__ = ["load_plan", "plan_shards", "save_plan"]

PLAN = "plan.json"


def plan_shards(spec: Path, shards: int) -> list[SpecWindow]:
    """At most `shards` windows of about equal rows; none is empty. Each carries the
    digest of its bytes, which its shard checks against the spec its node reads."""
    if spec.suffix.lower() in (".parquet", ".pq"):
        windows = _plan_parquet(spec, shards)
    else:
        windows = _plan_jsonl(spec, shards)
    return [replace(w, digest=window_digest(spec, w)) for w in windows]


def _plan_jsonl(spec: Path, shards: int) -> list[SpecWindow]:
    # Where each data row starts (and its line): a row is a line that is not blank, as
    # count_rows and the reader count them.
    starts: list[tuple[int, int]] = []
    ids = _Ids()
    offset = 0
    with open_spec(spec) as f:
        for line, raw in enumerate(_lines(f), 1):
            if raw.strip():
                starts.append((offset, line))
                if b'"custom_id"' in raw:
                    ids.add(_custom_id(raw), line)
            offset += len(raw)
    return _windows([s for s, _ in starts], [ln for _, ln in starts], offset, shards)


def _lines(f: IO[bytes]) -> Iterator[bytes]:
    """The file's physical lines with their newlines (an object in storage reads in
    chunks, not by line)."""
    rest = b""
    while chunk := f.read(1 << 20):
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        for part in parts:
            yield part + b"\n"
    if rest:
        yield rest


class _Ids:
    """A custom_id twice in the spec: one process records the second as an invalid row, but
    two shards would each send theirs. So a job on Ray refuses it before anything is sent."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def add(self, cid: object, line: int) -> None:
        if not isinstance(cid, str):
            return
        first = self._seen.setdefault(cid, line)
        if first != line:
            raise UsageError(
                f"custom_id {cid!r} is on lines {first} and {line}: a job on Ray needs every "
                "custom_id once (shards cannot see each other's rows); fix the spec, or run it "
                "without --engine ray"
            )


def _custom_id(raw: bytes) -> object:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None  # an invalid row: its shard records it as one
    return obj.get("custom_id") if isinstance(obj, dict) else None


def _windows(offsets: list[int], lines: list[int], end: int, shards: int) -> list[SpecWindow]:
    total = len(offsets)
    n = max(1, min(shards, total))
    cuts = [total * k // n for k in range(n + 1)]
    out = []
    for a, b in itertools.pairwise(cuts):
        if a == b:
            continue
        stop = offsets[b] if b < total else end
        out.append(SpecWindow(offsets[a], stop, a, lines[a], b - a))
    return out


def _plan_parquet(spec: Path, shards: int) -> list[SpecWindow]:
    import pyarrow.parquet as pq

    with open_spec(spec) as f:
        return _plan_row_groups(pq.ParquetFile(f), shards)


def _plan_row_groups(pf: Any, shards: int) -> list[SpecWindow]:
    meta = pf.metadata
    if "custom_id" in pf.schema_arrow.names:
        ids = _Ids()
        seq = 0
        for batch in pf.iter_batches(columns=["custom_id"]):
            for cid in batch.column(0).to_pylist():
                seq += 1
                ids.add(cid, seq)
    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    total = max(1, sum(sizes))
    n = max(1, min(shards, len(sizes)))
    # Each row group goes to the shard where its first row falls: whole groups, in order.
    members: list[list[int]] = [[] for _ in range(n)]
    firsts: list[int] = []
    seq = 0
    for g, size in enumerate(sizes):
        members[min(n - 1, seq * n // total)].append(g)
        firsts.append(seq)
        seq += size
    return [
        SpecWindow(m[0], m[-1] + 1, firsts[m[0]], firsts[m[0]] + 1, sum(sizes[m[0] : m[-1] + 1]))
        for m in members
        if m and sum(sizes[m[0] : m[-1] + 1])
    ]


def save_plan(out: Path, fingerprint: str, windows: list[SpecWindow]) -> None:
    path = out / "shards" / PLAN
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"spec_fingerprint": fingerprint, "shards": [asdict(w) for w in windows]}
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    tmp.replace(path)


def load_plan(out: Path, fingerprint: str) -> list[SpecWindow] | None:
    """The saved plan; a changed spec cannot be resumed by shards (its offsets moved)."""
    path = out / "shards" / PLAN
    if not path.exists():
        return None
    data = orjson.loads(path.read_bytes())
    if data["spec_fingerprint"] != fingerprint:
        raise UsageError(
            f"the spec changed since this job started in {out}: its shards are cut by "
            "position, so they cannot be resumed over another spec. Use a new --out folder."
        )
    return [SpecWindow(**w) for w in data["shards"]]
