"""Spec rows, spec files and settings that the job tests share."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from runner import RetryConfig, Settings
from runner.settings import Secret

__all__ = ["KEY", "chat_row", "settings_for", "write_spec"]

# A key with a recognisable secret part: tests assert it appears in no file or output.
KEY = "test-key-7f3a9c2e.SECRETPART"


def chat_row(
    i: int, *, model: str = "glm-4.5-air", text: str | None = None, max_tokens: int = 32
) -> dict[str, Any]:
    """A Batch-API chat line with custom_id `row-{i}`."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": text or f"question number {i}"}],
        "max_tokens": max_tokens,
    }
    return {"custom_id": f"row-{i}", "method": "POST", "url": "/v4/chat/completions", "body": body}


def write_spec(path: Path, rows: Iterable[dict[str, Any] | bytes]) -> Path:
    """A JSONL spec, one row a line; bytes are written as they are (malformed lines)."""
    with path.open("wb") as f:
        for row in rows:
            f.write((row if isinstance(row, bytes) else orjson.dumps(row)) + b"\n")
    return path


def settings_for(out: Path, spec: Path, base_url: str, **kw: Any) -> Settings:
    """Settings for a job against a simulator: no waits between retries, quick polls."""
    base = Settings(
        spec=spec,
        out=out,
        provider="zai",
        base_url=base_url,
        api_key=Secret(KEY),
        concurrency=8,
        progress=False,
        retry=RetryConfig(testing=True),
        poll_initial=0.05,
        poll_max=0.2,
        task_max_age=30.0,
    )
    return replace(base, **kw)
