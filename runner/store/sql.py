"""The checkpoint's connection, spoken in plain sqlite3: run a statement, read rows as
dicts, list, create and widen tables. All the store asks of a database, in one place.

sqlite-utils did this before. Importing it, and the plugins it looks up whenever it wraps
a connection (pluggy reads the entry points of every installed package), cost 0.05-0.08 s
of CPU before a run's first request: a third of the start-up. The tables made here are the
ones it made (same column types, a single integer key as `INTEGER PRIMARY KEY`, the same
index names), so a checkpoint from either opens the same.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

__all__ = ["Database"]

_TYPES = {int: "INTEGER", str: "TEXT", float: "REAL", bytes: "BLOB"}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Database:
    """One SQLite connection and the few verbs the store builds on."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def query(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> Iterator[dict[str, Any]]:
        """The rows of a SELECT, each a dict of column name to value."""
        cursor = self.conn.execute(sql, params)
        names = [d[0] for d in cursor.description]
        for row in cursor:
            yield dict(zip(names, row, strict=True))

    def table_names(self) -> list[str]:
        return [
            str(name)
            for (name,) in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]

    def columns(self, table: str) -> list[str]:
        return [str(r[1]) for r in self.conn.execute(f"PRAGMA table_info({_quote(table)})")]

    def create_table(
        self, name: str, columns: Mapping[str, type], pk: str | tuple[str, ...]
    ) -> None:
        """A table of `columns` (name -> Python type), keyed by `pk`; one integer key is the
        rowid itself, as sqlite-utils made it (rows are then stored in key order)."""
        keys = (pk,) if isinstance(pk, str) else pk
        defs = []
        for col, kind in columns.items():
            sql_type = _TYPES[kind]
            if len(keys) == 1 and col == keys[0]:
                sql_type += " PRIMARY KEY"
            defs.append(f"{_quote(col)} {sql_type}")
        if len(keys) > 1:
            defs.append(f"PRIMARY KEY ({', '.join(map(_quote, keys))})")
        self.conn.execute(f"CREATE TABLE {_quote(name)} ({', '.join(defs)})")

    def create_index(self, table: str, columns: Iterable[str]) -> None:
        cols = list(columns)
        index = _quote(f"idx_{table}_{'_'.join(cols)}")
        on = f"{_quote(table)} ({', '.join(map(_quote, cols))})"
        self.conn.execute(f"CREATE INDEX IF NOT EXISTS {index} ON {on}")

    def upsert(self, table: str, records: Sequence[Mapping[str, Any]], pk: str) -> None:
        """Insert `records`, or update the columns they name where their key exists."""
        for record in records:
            cols = list(record)
            sets = ", ".join(f"{_quote(c)} = excluded.{_quote(c)}" for c in cols if c != pk)
            self.conn.execute(
                f"INSERT INTO {_quote(table)} ({', '.join(map(_quote, cols))}) "
                f"VALUES ({', '.join('?' * len(cols))}) "
                f"ON CONFLICT ({_quote(pk)}) DO UPDATE SET {sets}",
                list(record.values()),
            )
