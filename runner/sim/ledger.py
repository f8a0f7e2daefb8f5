"""Counters of what the simulated platform saw, billed and refused.

The ledger is what tests assert on: it counts every request, every status, the peak
in-flight per (key, model), what was billed, and how often the same request id or the same
request body was accepted - the evidence that a runner does or does not pay twice. Key ids
(a sha256 prefix) stand in for API keys; the keys themselves are never stored here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["FAULT_KINDS", "Bill", "Ledger"]

FAULT_KINDS = ("429", "500", "503", "drop", "stall", "1302", "1303", "1113", "marker", "expired")
_BILL_FIELDS = ("prompt_tokens", "completion_tokens", "cached_tokens", "total_tokens")


@dataclass(slots=True)
class Bill:
    """What one accepted request costs; items (images, videos, searches) are per use."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    images: int = 0
    videos: int = 0
    searches: int = 0


class Ledger:
    """Mutable counters; every method is O(1) so the hot path stays cheap."""

    def __init__(self, *, track_ids: bool = True) -> None:
        self.track_ids = track_ids
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        """Zero every counter; requests now in flight stay counted in ``in_flight``."""
        self.requests: dict[str, int] = {}
        self.statuses: dict[str, int] = {}
        self.peak_in_flight = self.in_flight
        self.peak_concurrency: dict[str, dict[str, int]] = {}
        self.billed: dict[str, int] = dict.fromkeys(
            ("requests", *_BILL_FIELDS, "images", "videos", "searches"), 0
        )
        self.by_model: dict[str, dict[str, int]] = {}
        self.by_request_id: dict[str, int] = {}
        self.by_fingerprint: dict[str, int] = {}
        self.tasks = {"submitted": 0, "succeeded": 0, "failed": 0, "polls": 0}
        self.downloads = 0
        # Queueing mode: requests that reached a server slot (started), were answered
        # (finished), or whose client had left by then (cancelled: work done for nobody).
        self.server_work = {"started": 0, "finished": 0, "cancelled": 0}
        # Each distinct response_format a chat request carried (sorted-key JSON) -> count:
        # what a client really asked for, as the server saw it.
        self.response_formats: dict[str, int] = {}
        # The agents API: tasks created per request id, agent files uploaded per sha256.
        self.agent_tasks: dict[str, int] = {}
        self.agent_files: dict[str, int] = {}
        # sha256 of every file received (inline data URIs, uploads), in arrival order.
        self.files: list[str] = []
        self.faults: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)
        # Per key id: API requests that passed authentication, billed ones, and refusals,
        # so a test can tell one account of a pool from another.
        self.by_key: dict[str, dict[str, int]] = {}
        # The server-side Batch API, kept apart from online billing (it is priced apart).
        self.batch: dict[str, Any] = {
            **dict.fromkeys(("files", "batches", "requests", "failed"), 0),
            **dict.fromkeys((*_BILL_FIELDS, "images"), 0),
            "by_model": {},
        }

    def received(self, endpoint: str) -> None:
        self.requests[endpoint] = self.requests.get(endpoint, 0) + 1
        self.in_flight += 1
        if self.in_flight > self.peak_in_flight:
            self.peak_in_flight = self.in_flight

    def finished(self, status: int | None) -> None:
        """One request left the server; ``status`` is None when its connection was dropped."""
        self.in_flight -= 1
        if status is not None:
            name = str(status)
            self.statuses[name] = self.statuses.get(name, 0) + 1

    def fault(self, kind: str, key_id: str = "") -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1
        if key_id:
            row = self._key_row(key_id)
            row[kind] = row.get(kind, 0) + 1

    def _key_row(self, key_id: str) -> dict[str, int]:
        row = self.by_key.get(key_id)
        if row is None:
            row = self.by_key[key_id] = {"requests": 0, "billed": 0}
        return row

    def authenticated(self, key_id: str) -> None:
        """One API request from this key reached the account checks."""
        self._key_row(key_id)["requests"] += 1

    def concurrency(self, key_id: str, model: str, now: int) -> None:
        """Record the in-flight count of one (key, model) right after it grew."""
        peaks = self.peak_concurrency.get(key_id)
        if peaks is None:
            peaks = self.peak_concurrency[key_id] = {}
        if now > peaks.get(model, 0):
            peaks[model] = now

    def bill(self, model: str, bill: Bill, key_id: str = "") -> None:
        total = bill.prompt_tokens + bill.completion_tokens
        if key_id:
            self._key_row(key_id)["billed"] += 1
        billed = self.billed
        billed["requests"] += 1
        billed["prompt_tokens"] += bill.prompt_tokens
        billed["completion_tokens"] += bill.completion_tokens
        billed["cached_tokens"] += bill.cached_tokens
        billed["total_tokens"] += total
        billed["images"] += bill.images
        billed["videos"] += bill.videos
        billed["searches"] += bill.searches
        row = self.by_model.get(model)
        if row is None:
            row = self.by_model[model] = dict.fromkeys(
                (
                    "requests",
                    "prompt_tokens",
                    "completion_tokens",
                    "total_tokens",
                    "images",
                    "videos",
                ),
                0,
            )
        row["requests"] += 1
        row["prompt_tokens"] += bill.prompt_tokens
        row["completion_tokens"] += bill.completion_tokens
        row["total_tokens"] += total
        row["images"] += bill.images
        row["videos"] += bill.videos

    def bill_batch(self, model: str, bill: Bill | None) -> None:
        """Count one batch line: billed (with its tokens) or failed (None)."""
        batch = self.batch
        if bill is None:
            batch["failed"] += 1
            return
        total = bill.prompt_tokens + bill.completion_tokens
        batch["requests"] += 1
        batch["prompt_tokens"] += bill.prompt_tokens
        batch["completion_tokens"] += bill.completion_tokens
        batch["cached_tokens"] += bill.cached_tokens
        batch["total_tokens"] += total
        batch["images"] += bill.images
        row = batch["by_model"].setdefault(
            model, dict.fromkeys(("requests", "prompt_tokens", "completion_tokens"), 0)
        )
        row["requests"] += 1
        row["prompt_tokens"] += bill.prompt_tokens
        row["completion_tokens"] += bill.completion_tokens

    def agent_task(self, request_id: str) -> None:
        self.agent_tasks[request_id] = self.agent_tasks.get(request_id, 0) + 1

    def agent_file(self, sha256: str) -> None:
        self.agent_files[sha256] = self.agent_files.get(sha256, 0) + 1

    def accepted(self, request_id: str, fingerprint: str) -> None:
        """Count one accepted submission under its request id and its body fingerprint."""
        if self.track_ids:
            ids = self.by_request_id
            ids[request_id] = ids.get(request_id, 0) + 1
            prints = self.by_fingerprint
            prints[fingerprint] = prints.get(fingerprint, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """The stats document served at ``GET /_sim/stats`` (fresh containers, safe to keep)."""
        billed: dict[str, Any] = dict(self.billed)
        billed["by_model"] = {m: dict(row) for m, row in self.by_model.items()}
        return {
            "requests": dict(self.requests),
            "statuses": dict(self.statuses),
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "peak_concurrency": {k: dict(v) for k, v in self.peak_concurrency.items()},
            "billed": billed,
            "submissions_by_request_id": dict(self.by_request_id),
            "submissions_by_fingerprint": dict(self.by_fingerprint),
            "duplicates": {
                "request_id": sorted(k for k, n in self.by_request_id.items() if n > 1),
                "fingerprint": sorted(k for k, n in self.by_fingerprint.items() if n > 1),
            },
            "tasks": dict(self.tasks),
            "downloads": self.downloads,
            "server_work": dict(self.server_work),
            "response_formats": dict(self.response_formats),
            "agents": {"tasks": dict(self.agent_tasks), "files": dict(self.agent_files)},
            "files": list(self.files),
            "faults": dict(self.faults),
            "by_key": {k: dict(v) for k, v in self.by_key.items()},
            "batch": {
                **{k: v for k, v in self.batch.items() if k != "by_model"},
                "by_model": {m: dict(r) for m, r in self.batch["by_model"].items()},
            },
        }
