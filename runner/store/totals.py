"""Counts, tokens and cost of a checkpoint, kept as rows are written, and its read side.

`runner status` on a job of ten million rows must not sum ten million rows: the `totals`
table holds one line per (kind, model, key, status, error code) with the sums of its rows,
kept in the same transaction as the rows themselves, so a kill -9 never leaves the two
apart. A row's outcome is added by `Store.record` from the batch it commits (a tally in
Python: a trigger per row cost 4 µs, a fifth of the commit); whatever takes a row away
(a replay's REPLACE, `discard`, `archive`, an UPDATE) is subtracted by a trigger, which
costs nothing until it fires. Superseded attempts (`runner retry` moves them into
`attempts`) are added by a trigger on that table, as kind 'attempt': they were billed.

`recount` sums the tables themselves, as the totals did before: the backfill of a
checkpoint written before the totals existed, the read side of one that cannot be written,
and what the tests check the kept totals against.
"""

from __future__ import annotations

import heapq
import operator
import re
import sqlite3
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from .batches import OPEN_BATCH_SQL
from .sql import Database

if TYPE_CHECKING:
    from ..outcome import Outcome

__all__ = [
    "BLOCK",
    "NO_MODEL",
    "TOTALS_SCHEMA",
    "Totals",
    "add_blocks",
    "message_shape",
    "tally",
    "totals_triggers",
]

# The model column of rows that failed validation before naming a model.
NO_MODEL = "(invalid rows: no model)"

# A line of `totals` is keyed by these (NULL stored as '': SQLite's keys never match NULL)...
_KEYS = ("kind", "model", "key_fp", "status", "error_code")
# ...and sums these over its rows: the row count, the columns of `rows` of the same name,
# succeeded rows without a price, and succeeded answers cut at max_tokens.
_SUMMED = (
    "cost_nano",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "total_tokens",
    "images",
    "videos",
)
_SUMS = ("rows", *_SUMMED, "unpriced", "truncated")
_TOKENS = ("prompt_tokens", "completion_tokens", "cached_tokens", "total_tokens")

TOTALS_SCHEMA = (
    "CREATE TABLE totals ("
    + ", ".join(f"{k} TEXT NOT NULL" for k in _KEYS)
    + ", "
    + ", ".join(f"{s} INTEGER NOT NULL DEFAULT 0" for s in _SUMS)
    + f", PRIMARY KEY ({', '.join(_KEYS)})) WITHOUT ROWID"
)

_UPSERT = (
    f"INSERT INTO totals ({', '.join(_KEYS + _SUMS)}) "
    f"VALUES ({', '.join('?' * (len(_KEYS) + len(_SUMS)))}) "
    f"ON CONFLICT ({', '.join(_KEYS)}) DO UPDATE SET "
    + ", ".join(f"{s} = {s} + excluded.{s}" for s in _SUMS)
)


def _unpriced(r: str) -> str:
    return f"COALESCE({r}.status = 'succeeded' AND {r}.cost_nano IS NULL, 0)"


def _truncated(r: str) -> str:
    """SQL: the row is a succeeded answer cut at max_tokens (finish_reason length). The
    substring test first: parsing every answer's JSON would make a recount (and a delete)
    parse gigabytes; `_cut` is the same test in Python."""
    return (
        f"(CASE WHEN {r}.status = 'succeeded' AND instr({r}.response, '\"length\"') > 0 "
        f"AND json_valid({r}.response) THEN "
        f"json_extract({r}.response, '$.choices[0].finish_reason') IS 'length' ELSE 0 END)"
    )


def _key_values(r: str, kind: str) -> list[str]:
    return [f"'{kind}'", *(f"COALESCE({r}.{k}, '')" for k in _KEYS[1:])]


def _change(r: str, kind: str, sign: str) -> str:
    """SQL: add (sign '') or take away (sign '-') one row `r` (NEW or OLD) of `kind`.

    An upsert even to take away: within one transaction a row may be replaced before the
    batch that wrote it was added (`Store.record` adds after it inserts), and a line then
    runs negative for a moment instead of missing the subtraction.
    """
    values = [
        f"{sign}1",
        *(f"{sign}COALESCE({r}.{s}, 0)" for s in _SUMMED),
        f"{sign}{_unpriced(r)}",
        f"{sign}{_truncated(r)}",
    ]
    return (
        f"INSERT INTO totals ({', '.join(_KEYS + _SUMS)}) "
        f"VALUES ({', '.join(_key_values(r, kind) + values)}) "
        f"ON CONFLICT ({', '.join(_KEYS)}) DO UPDATE SET "
        + ", ".join(f"{s} = {s} + excluded.{s}" for s in _SUMS)
    )


# `blocks`: per block of 2**BLOCK seqs, how many of its rows are final (succeeded or
# failed), kept as `totals` is, so that a resume finds the done rows of ten million from a
# few thousand lines instead of a scan of the status index (1.8 s at ten million).
BLOCK = 12
BLOCKS_SCHEMA = "CREATE TABLE blocks (block INTEGER PRIMARY KEY, done INTEGER NOT NULL)"
_FINAL = "('succeeded', 'failed')"
_TO_BLOCK = "ON CONFLICT (block) DO UPDATE SET done = done + excluded.done"
_ADD_BLOCKS = f"INSERT INTO blocks (block, done) VALUES (?, ?) {_TO_BLOCK}"


def _block_change(r: str, sign: str) -> str:
    """SQL: count (sign '') or uncount ('-') row `r` in its block, if it is final (an
    upsert even to uncount, as in `_change`)."""
    return (
        f"INSERT INTO blocks (block, done) SELECT {r}.seq >> {BLOCK}, {sign}1 "
        f"WHERE {r}.status IN {_FINAL} {_TO_BLOCK}"
    )


def _blocks_sql(table: str, offset: int) -> str:
    """SQL: the lines of `blocks` that the rows of `table` make, their seqs moved by
    `offset` (a shard's own seqs start at 0)."""
    return (
        f"SELECT (seq + {int(offset)}) >> {BLOCK}, COUNT(*) FROM {table} "
        f"WHERE status IN {_FINAL} GROUP BY 1"
    )


def add_blocks(conn: sqlite3.Connection, outcomes: Sequence[Outcome]) -> None:
    """Count a batch's final rows in their blocks, inside the caller's transaction."""
    counts: dict[int, int] = {}
    for o in outcomes:
        if o.status == "succeeded" or o.status == "failed":
            b = o.seq >> BLOCK
            counts[b] = counts.get(b, 0) + 1
    conn.executemany(_ADD_BLOCKS, counts.items())


def totals_triggers(table: str) -> list[str]:
    """The triggers that keep `totals` right when rows of `table` ("rows" or "attempts")
    change other than by `Store.record`: a delete (a REPLACE's too, with recursive_triggers
    on), an update, and for attempts their insert."""
    kind = "row" if table == "rows" else "attempt"
    out = [
        f"CREATE TRIGGER IF NOT EXISTS totals_{table}_delete AFTER DELETE ON {table} "
        f"BEGIN {_change('OLD', kind, '-')}; END",
        f"CREATE TRIGGER IF NOT EXISTS totals_{table}_update AFTER UPDATE ON {table} "
        f"BEGIN {_change('OLD', kind, '-')}; {_change('NEW', kind, '')}; END",
    ]
    if table == "rows":
        out += [
            f"CREATE TRIGGER IF NOT EXISTS blocks_rows_delete AFTER DELETE ON rows "
            f"BEGIN {_block_change('OLD', '-')}; END",
            f"CREATE TRIGGER IF NOT EXISTS blocks_rows_update AFTER UPDATE ON rows "
            f"BEGIN {_block_change('OLD', '-')}; {_block_change('NEW', '')}; END",
        ]
    if table == "attempts":
        out.append(
            f"CREATE TRIGGER IF NOT EXISTS totals_{table}_insert AFTER INSERT ON {table} "
            f"BEGIN {_change('NEW', kind, '')}; END"
        )
    return out


def _sum_sql(table: str, kind: str) -> str:
    """SQL: the lines of `totals` that the rows of `table` make, as kind `kind`."""
    keys = ", ".join(_key_values("t", kind))
    sums = ", ".join(
        [
            "COUNT(*)",
            *(f"COALESCE(SUM(t.{s}), 0)" for s in _SUMMED),
            f"COALESCE(SUM({_unpriced('t')}), 0)",
            f"COALESCE(SUM({_truncated('t')}), 0)",
        ]
    )
    # WHERE true: an INSERT ... SELECT ... ON CONFLICT needs one to parse (SQLite's upsert).
    return f"SELECT {keys}, {sums} FROM {table} AS t WHERE true GROUP BY 2, 3, 4, 5"


def recount_sql(tables: Iterable[str]) -> str:
    """SQL: the lines of `totals` summed from the tables ("rows", "attempts") themselves."""
    return " UNION ALL ".join(_sum_sql(t, "row" if t == "rows" else "attempt") for t in tables)


def _cut(response: str | None) -> bool:
    """Python's `_truncated`: the answer's first choice ended at max_tokens."""
    if not response or '"length"' not in response:
        return False
    try:
        body = orjson.loads(response)
    except orjson.JSONDecodeError:
        return False
    choices = body.get("choices") if type(body) is dict else None
    first = choices[0] if type(choices) is list and choices else None
    return type(first) is dict and first.get("finish_reason") == "length"


_TALLIED = operator.attrgetter("model", "key_fp", "status", "error_code", *_SUMMED, "response")


def tally(outcomes: Sequence[Outcome]) -> list[tuple[Any, ...]]:
    """A batch of outcomes as `totals` lines (one per key), for `add_tally`: 0.6 µs a row."""
    acc: dict[tuple[str, str, str, str], list[int]] = {}
    for model, key_fp, status, code, *sums, response in map(_TALLIED, outcomes):
        key = (model or "", key_fp or "", status or "", code or "")
        line = acc.get(key)
        if line is None:
            line = acc[key] = [0] * len(_SUMS)
        line[0] += 1
        for i, v in enumerate(sums, 1):
            if v:
                line[i] += v
        if status == "succeeded":
            if sums[0] is None:
                line[-2] += 1
            if _cut(response):
                line[-1] += 1
    return [("row", *key, *line) for key, line in acc.items()]


def add_tally(conn: sqlite3.Connection, lines: Sequence[tuple[Any, ...]]) -> None:
    """Add `tally`'s lines, inside the caller's transaction."""
    conn.executemany(_UPSERT, lines)


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


def _model_entry() -> dict[str, int]:
    return dict.fromkeys(("rows", "succeeded", "failed", *_SUMMED, "unpriced"), 0)


class Totals:
    """Mixed into `Store`: the totals read over its connection."""

    db: Database

    def job(self) -> dict[str, Any] | None:
        raise NotImplementedError

    def _ensure_totals(self) -> None:
        """Create `totals` and its triggers, summing what the checkpoint holds already (a
        checkpoint from before the totals): one transaction, so a kill leaves neither."""
        names = set(self.db.table_names())
        with self.db.conn as conn:
            # sqlite3 would run the DDL outside any transaction (it opens one only for DML),
            # and a kill between the table and its sums would leave totals of nothing.
            conn.execute("BEGIN")
            if "totals" not in names:
                conn.execute(TOTALS_SCHEMA)
                tables = [t for t in ("rows", "attempts") if t in names]
                conn.execute(f"INSERT INTO totals {recount_sql(tables)}")
            if "blocks" not in names:
                conn.execute(BLOCKS_SCHEMA)
                if "rows" in names:
                    conn.execute(f"INSERT INTO blocks {_blocks_sql('rows', 0)}")
            for table in ("rows", "attempts"):
                if table in names:
                    for sql in totals_triggers(table):
                        conn.execute(sql)

    def add_totals_of(self, table: str, seq_offset: int = 0) -> None:
        """Add the rows of `table` (a shard's, just copied into `rows` by one INSERT ...
        SELECT, which `record` never saw) to `totals` and `blocks`, inside the caller's
        transaction; `seq_offset` moves the table's seqs to the job's."""
        sets = ", ".join(f"{s} = {s} + excluded.{s}" for s in _SUMS)
        self.db.conn.execute(
            f"INSERT INTO totals {_sum_sql(table, 'row')} "
            f"ON CONFLICT ({', '.join(_KEYS)}) DO UPDATE SET {sets}"
        )
        self.db.conn.execute(f"INSERT INTO blocks {_blocks_sql(table, seq_offset)} {_TO_BLOCK}")

    def done_blocks(self) -> list[tuple[int, int]]:
        """(block, final rows in it) for blocks with any, as kept; summed from the rows
        where the checkpoint has no `blocks` (read-only, from before them)."""
        sql = "SELECT block, done FROM blocks WHERE done > 0"
        if "blocks" not in self.db.table_names():
            sql = _blocks_sql("rows", 0)
        return [(int(b), int(n)) for b, n in self.db.execute(sql)]

    def recount(self) -> list[tuple[Any, ...]]:
        """The lines `totals` should hold, summed from the rows (and attempts) themselves,
        in key order and without empty lines."""
        names = set(self.db.table_names())
        tables = [t for t in ("rows", "attempts") if t in names]
        lines = self.db.execute(recount_sql(tables)).fetchall()
        return sorted(tuple(line) for line in lines)

    def kept_totals(self) -> list[tuple[Any, ...]]:
        """The lines of `totals` as kept, in key order, without lines that came to nothing;
        a checkpoint that has none (read-only, from before them) is summed instead."""
        if "totals" not in self.db.table_names():
            return self.recount()
        sums = " OR ".join(f"{s} != 0" for s in _SUMS)
        return sorted(tuple(r) for r in self.db.execute(f"SELECT * FROM totals WHERE {sums}"))

    def total_cost(self) -> int:
        """The cost of every stored row and superseded attempt, in nano-units (what a
        --max-cost resume has spent)."""
        i = len(_KEYS) + _SUMS.index("cost_nano")
        return sum(int(line[i]) for line in self.kept_totals())

    def truncated_rows(self) -> int:
        """Succeeded rows whose answer was cut at max_tokens (finish_reason length)."""
        return sum(int(line[-1]) for line in self.kept_totals() if line[0] == "row")

    def status_counts(self) -> dict[str, int]:
        """Rows by status (succeeded, failed, submitting, submitted)."""
        counts: dict[str, int] = {}
        for line in self.kept_totals():
            if line[0] == "row":
                counts[line[3]] = counts.get(line[3], 0) + int(line[len(_KEYS)])
        return counts

    def summary(self) -> dict[str, Any]:
        """Counts and cost: what `runner status` prints and what the tests reconcile.

        Read from the kept totals (a few lines, whatever the job's size); only the failed
        rows are read, to group their causes.
        """
        job = self.job()
        total = int(job["total_rows"]) if job and job["total_rows"] is not None else 0
        counts = dict.fromkeys(("succeeded", "failed", "submitted", "submitting"), 0)
        by_model: dict[str, dict[str, int]] = {}
        by_key: dict[str, list[int]] = {}
        codes: dict[str, int] = {}
        tot = dict.fromkeys(("cost_nano", *_TOKENS), 0)
        for kind, model, key_fp, status, code, *values in self.kept_totals():
            sums = dict(zip(_SUMS, (int(v) for v in values), strict=True))
            entry = by_model.setdefault(model or NO_MODEL, _model_entry())
            for k in tot:
                tot[k] += sums[k]
            # Superseded attempts (`runner retry`) were billed: cost and tokens keep them.
            for k in _SUMMED:
                entry[k] += sums[k]
            if kind != "row":
                continue
            n = sums["rows"]
            counts[status] = counts.get(status, 0) + n
            entry["rows"] += n
            entry["unpriced"] += sums["unpriced"]
            if status in ("succeeded", "failed"):
                entry[status] += n
            if status == "failed":
                codes[code or "None"] = codes.get(code or "None", 0) + n
            if key_fp:
                per_key = by_key.setdefault(key_fp, [0, 0, 0, 0])
                per_key[0] += n
                per_key[1] += n if status == "succeeded" else 0
                per_key[2] += n if status == "failed" else 0
                per_key[3] += sums["cost_nano"]
        terminal = counts["succeeded"] + counts["failed"]
        in_batches = int(self.db.execute(OPEN_BATCH_SQL.format(cols="COUNT(*)")).fetchone()[0] or 0)
        return {
            "total": total,
            "succeeded": counts["succeeded"],
            "failed": counts["failed"],
            "in_progress": counts["submitted"] + counts["submitting"] + in_batches,
            "pending": max(total - terminal, 0),
            "tokens": {k: v for k, v in tot.items() if k != "cost_nano"},
            "cost_nano": tot["cost_nano"],
            # Succeeded rows of models with no price: the cost above leaves them out.
            "unpriced": sum(m["unpriced"] for m in by_model.values()),
            "by_model": dict(sorted(by_model.items())),
            "by_key": self._by_key(by_key),
            "error_codes": dict(sorted(codes.items(), key=lambda c: -c[1])),
            "errors": self.error_groups(),
            "runs": self.runs(),
            "settings": job["settings"] if job else {},
            "spec": job["spec_path"] if job else None,
        }

    def _by_key(self, sums: dict[str, list[int]]) -> dict[str, dict[str, Any]]:
        """Rows, outcomes and cost per key label; rows no key sent (invalid ones) are left
        out, so the costs add up to the total. Empty for a job of one key and no pool."""
        if "keys" not in self.db.table_names():
            return {}
        keys = {r["fingerprint"]: dict(r) for r in self.db.query("SELECT * FROM keys")}
        out: dict[str, dict[str, Any]] = {}
        for k in sorted(keys.values(), key=lambda r: int(r["position"] or 0)):
            out[k["label"]] = {
                "rows": 0, "succeeded": 0, "failed": 0, "cost_nano": 0,
                "state": k["state"], "reason": k["reason"], "advice": k["advice"],
            }  # fmt: skip
        for fp, (rows, succeeded, failed, cost) in sorted(sums.items()):
            known = keys.get(fp)
            label = known["label"] if known else f"key {fp[:8]} (not in the last run)"
            entry = out.setdefault(label, {"state": "gone", "reason": None, "advice": None})
            entry.update(rows=rows, succeeded=succeeded, failed=failed, cost_nano=cost)
        return out

    def runs(self) -> list[dict[str, Any]]:
        """Every run of the job (start, end, outcome, message, requests sent, retries)."""
        return [dict(r) for r in self.db.query("SELECT * FROM runs ORDER BY id")]

    def error_groups(self, limit: int = 20) -> list[dict[str, Any]]:
        """Failed rows grouped by code and message shape, largest first.

        One example per code would hide different causes under the same code (a bad JSON line
        and a missing field are both `invalid_row`); the shape drops what differs from row to
        row (line numbers, quoted values, numbers) so that each cause is its own group. Reads
        the failed rows (over the status index), so its time grows with them alone.
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
