"""Checkpoint → results files: Parquet for datasets and analytics, JSONL in Batch-API form.

Both stream the store in chunks, so exporting a million rows holds one chunk in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from .cost import NANO
from .store import Store

__all__ = ["RESULT_SCHEMA", "write_results_jsonl", "write_results_parquet"]

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
    ]
)


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {name: [] for name in RESULT_SCHEMA.names}
    for r in rows:
        for name in RESULT_SCHEMA.names:
            if name == "cost":
                v = r.get("cost_nano")
                cols[name].append(None if v is None else v / NANO)
            elif name in ("started_at", "finished_at"):
                v = r.get(name)
                cols[name].append(None if v is None else int(v * 1000))
            else:
                cols[name].append(r.get(name))
    return cols


def write_results_parquet(store: Store, path: Path) -> int:
    """Write every stored row to Parquet atomically (temp file, then rename)."""
    tmp = path.with_suffix(".parquet.tmp")
    n = 0
    with pq.ParquetWriter(tmp, RESULT_SCHEMA) as writer:
        for chunk in store.iter_rows():
            writer.write_table(pa.table(_columns(chunk), schema=RESULT_SCHEMA))
            n += len(chunk)
    tmp.replace(path)
    return n


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
    with tmp.open("wb") as f:
        for chunk in store.iter_rows():
            for row in chunk:
                if row["status"] not in ("succeeded", "failed"):
                    continue
                f.write(orjson.dumps(batch_line(row)) + b"\n")
                n += 1
    tmp.replace(path)
    return n
