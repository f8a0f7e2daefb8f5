"""Async tasks (video, async image, async chat) and the signed URLs of their results.

A task's outcome is fixed when it is submitted (the ``[[sim:task-fail]]`` marker decides
FAIL); only time reveals it: it reads PROCESSING until ``task_seconds`` have passed.
Result URLs carry their issue time and an HMAC, so the simulator can expire them
(``url_ttl``) without remembering them, and every poll of a finished task issues fresh
ones - the behaviour a runner needs to test "download failed, poll again".
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from runner.sim.errors import ApiError
from runner.sim.ledger import Ledger

__all__ = ["Signer", "Task", "TaskStore", "UrlExpired"]

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}/[0-9]{1,3}\.(mp4|jpg|png|pdf)$")


class UrlExpired(ApiError):
    """A genuine result URL used after ``url_ttl``: the client must poll again."""

    def __init__(self) -> None:
        super().__init__(
            403,
            "Request has expired: poll the task again for a fresh URL",
            status=403,
        )


@dataclass(slots=True)
class Task:
    """One submitted async task; ``result`` holds the finished chat payload for async chat."""

    id: str
    kind: str  # "video" | "image" | "chat"
    model: str
    request_id: str
    key_id: str
    ready_at: float
    fail: bool
    result: dict[str, Any] = field(default_factory=dict)


class TaskStore:
    """Tasks by id, plus a heap that turns due tasks into succeeded/failed counts."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._tasks: dict[str, Task] = {}
        self._due: list[tuple[float, str, bool]] = []

    def add(self, task: Task) -> None:
        self._tasks[task.id] = task
        heapq.heappush(self._due, (task.ready_at, task.id, task.fail))
        self.ledger.tasks["submitted"] += 1

    def settle(self, now: float) -> None:
        """Count tasks that reached their terminal state by ``now``."""
        due = self._due
        counts = self.ledger.tasks
        while due and due[0][0] <= now:
            _, _, fail = heapq.heappop(due)
            counts["failed" if fail else "succeeded"] += 1

    def get(self, task_id: str, key_id: str) -> Task:
        """The task, or a 404 when unknown or owned by another key (no existence leak)."""
        task = self._tasks.get(task_id)
        if task is None or task.key_id != key_id:
            raise ApiError(404, "Task not found: the id is unknown", status=404)
        return task


class Signer:
    """Issues and checks result-file URLs: ``{root}/_sim/files/{name}?iat=...&sig=...``."""

    def __init__(self, seed: int) -> None:
        # A per-process secret: URLs from an earlier simulator never validate here.
        self._secret = hashlib.sha256(f"{seed}".encode() + os.urandom(16)).digest()

    def _sign(self, name: str, iat: str) -> str:
        message = f"{name}:{iat}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:20]

    def issue(self, root: str, name: str) -> str:
        iat = str(int(time.time() * 1000))
        return f"{root}/_sim/files/{name}?iat={iat}&sig={self._sign(name, iat)}"

    def check(self, name: str, query: bytes, ttl: float | None) -> None:
        """Raise 403 for a forged, unknown or expired URL; return for a valid one."""
        if not _NAME_RE.match(name):
            raise ApiError(403, "Access denied: no such file", status=403)
        params = parse_qs(query.decode("latin-1"))
        iat = params.get("iat", [""])[0]
        sig = params.get("sig", [""])[0]
        if not iat.isdigit() or not hmac.compare_digest(sig, self._sign(name, iat)):
            raise ApiError(403, "Access denied: the URL signature is invalid", status=403)
        if ttl is not None and time.time() - int(iat) / 1000 > ttl:
            raise UrlExpired()
