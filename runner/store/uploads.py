"""Agent files (`files` with purpose agent): one row per (content sha256, key) uploaded.

Two phases, as for async tasks: the intent (no `file_id`) is committed before the upload
is sent, the platform's id as soon as it answers. A row left without an id is one whose
upload may or may not have arrived; agent_files.py looks it up by its name before it
uploads again, so a file's content is uploaded once per job and key, kill -9 or not.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .sql import Database

__all__ = ["AGENT_FILE_COLUMNS", "UploadTables"]

AGENT_FILE_COLUMNS: dict[str, type] = {
    "sha256": str,
    "key_fp": str,
    "name": str,  # the name it is uploaded under, which carries the content hash
    "path": str,  # the local file, relative to the files root, as the spec named it
    "bytes": int,
    "file_id": str,  # NULL while the upload is in doubt
    "created_at": float,
    "updated_at": float,
}


class UploadTables:
    """Mixed into `Store`: the agent files' table over its connection."""

    db: Database
    path: Path

    def _ensure_agent_files(self) -> None:
        if "agent_files" not in self.db.table_names():
            self.db.create_table("agent_files", AGENT_FILE_COLUMNS, pk=("sha256", "key_fp"))

    def agent_files(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Every recorded upload, intents included, by (sha256, key fingerprint)."""
        if "agent_files" not in self.db.table_names():
            return {}
        rows = self.db.query("SELECT * FROM agent_files")
        return {(r["sha256"], r["key_fp"]): dict(r) for r in rows}

    def record_agent_file(
        self, sha256: str, key_fp: str, name: str, path: str, size: int, file_id: str | None
    ) -> None:
        """Commit an upload's intent (`file_id` None) or its id."""
        now = time.time()
        try:
            with self.db.conn as conn:
                conn.execute(
                    "INSERT INTO agent_files (sha256, key_fp, name, path, bytes, file_id, "
                    "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (sha256, key_fp) DO UPDATE SET file_id = excluded.file_id, "
                    "updated_at = excluded.updated_at",
                    [sha256, key_fp, name, path, size, file_id, now, now],
                )
        except sqlite3.DatabaseError as exc:
            raise CheckpointError(f"cannot write checkpoint {self.path}: {exc}") from exc
