"""The response cache: answers already paid for, shared by every job on this machine.

Content-addressed: the key is a SHA-256 of the provider, its base URL, the endpoint and the
request body in canonical form (sorted keys, orjson), so two jobs that send the same
request share one answer, and a changed prompt, schema, model or parameter is a miss. The
API key is never part of the key nor stored. Only answers that succeeded (and, for
`generate`, passed the schema check) are stored.

One SQLite file in WAL mode under the user's cache folder (`$XDG_CACHE_HOME/glm-batch-runner`,
else `~/.cache/glm-batch-runner`): readers never block the writer, several jobs may share it,
and a job killed with `kill -9` loses at most its last uncommitted batch of new entries
(the checkpoint still holds those answers).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

__all__ = ["ResponseCache", "cache_key", "default_cache_dir"]

APP = "glm-batch-runner"
FILE = "responses.sqlite"


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or ""
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache"
    return root / APP


def cache_key(scope: str, endpoint: str, body: Mapping[str, Any]) -> str:
    """The content address of one request: scope (provider and base URL), endpoint, body."""
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    h = hashlib.sha256(scope.encode())
    h.update(b"\0" + endpoint.encode() + b"\0")
    h.update(canonical)
    return h.hexdigest()


class ResponseCache:
    """get() on the event loop (a WAL read), put_many() from a worker thread (one writer)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / FILE
        self._write_lock = threading.Lock()
        self._writer = self._connect()
        with self._writer:
            self._writer.execute(
                "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, response TEXT NOT NULL,"
                " created_at REAL NOT NULL) WITHOUT ROWID"
            )
        self._reader = self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def get(self, key: str) -> str | None:
        row = self._reader.execute("SELECT response FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put_many(self, items: Sequence[tuple[str, str]]) -> None:
        if not items:
            return
        now = time.time()
        with self._write_lock, self._writer:
            self._writer.executemany(
                "INSERT OR IGNORE INTO answers (key, response, created_at) VALUES (?, ?, ?)",
                [(k, v, now) for k, v in items],
            )

    def __len__(self) -> int:
        return int(self._reader.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        self._reader.close()
        with self._write_lock:
            self._writer.close()
