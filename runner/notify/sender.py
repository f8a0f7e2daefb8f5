"""Sending messages in the background: retried, bounded, never in the job's way.

`Notifier.run` is a task of the job's task group that takes messages from a small queue
and posts each to every target, with a few retries. Posting to the queue never waits; a
message that cannot be delivered costs one warning line on stderr and a note in
OUT/notifications.json, which `runner status` shows. When the job ends, `close` gives the
queue a bounded time to drain (the `finished` message is usually still in it), so a dead
webhook delays the exit by at most `DRAIN_S` seconds and never changes the exit code.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import orjson
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..http import HttpConfig
from .messages import text
from .webhooks import Target

__all__ = ["DRAIN_S", "NOTES", "Notifier", "read_notes"]

NOTES = "notifications.json"
ATTEMPTS = 4
FIRST_WAIT = 1.0  # seconds before the second attempt; doubled for each later one
TIMEOUT_S = 10.0
DRAIN_S = 20.0  # the longest the end of a job waits for its last messages
_KEEP_NOTES = 50


class Notifier:
    """The job's outgoing messages: `post` from anywhere on the loop, `run` in a task."""

    def __init__(
        self,
        targets: Sequence[Target],
        out: Path,
        http: HttpConfig | None = None,
        *,
        first_wait: float | None = None,
    ) -> None:
        self.targets = list(targets)
        self.out = out
        self.http = http or HttpConfig()
        self.first_wait = FIRST_WAIT if first_wait is None else first_wait
        self._send: MemoryObjectSendStream[dict[str, Any]]
        self._receive: MemoryObjectReceiveStream[dict[str, Any]]
        self._send, self._receive = anyio.create_memory_object_stream[dict[str, Any]](16)
        self.failures = 0
        self.done = anyio.Event()  # set when `run` has sent (or given up) everything

    def post(self, event: Mapping[str, Any]) -> None:
        """Queue a message; never waits (a full queue drops it, with a warning)."""
        if not self.targets:
            return
        try:
            self._send.send_nowait(dict(event))
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            _warn(f"notification {event.get('event')!r} dropped: too many queued")

    def close(self) -> None:
        """No more messages: `run` returns once the queued ones are sent (or given up)."""
        self._send.close()

    async def run(self) -> None:
        from ..http.config import make_client  # httpx: loaded only by a job that notifies

        try:
            async with self._receive:
                try:
                    async with make_client(self.http, timeout=TIMEOUT_S) as client:
                        async for event in self._receive:
                            for target in self.targets:
                                await self._deliver(client, target, event)
                except Exception as exc:  # never the job's problem: say so, drop the rest
                    _warn(f"notifications are off for this run: {type(exc).__name__}: {exc}")
                    async for _ in self._receive:
                        pass
        finally:
            self.done.set()

    async def _deliver(self, client: Any, target: Target, event: dict[str, Any]) -> None:
        import httpx

        why = "not sent"
        wait = self.first_wait
        for attempt in range(1, ATTEMPTS + 1):
            url, body = target.request(event, text(event))
            try:
                resp = await client.post(
                    url, content=body, headers={"content-type": "application/json"}
                )
                refused = target.accepted(resp.status_code, resp.content)
                if refused is None:
                    self._note(target, event, None)
                    return
                why = refused
                if 400 <= resp.status_code < 500 and resp.status_code != 429:
                    break  # a wrong URL or a refused signature: the same again won't pass
            except httpx.HTTPError as exc:
                # The URL holds the webhook's token: never in a warning or a note.
                why = f"{type(exc).__name__}: {exc}"
                why = why.replace(url, target.name).replace(target.url, target.name)
            if attempt < ATTEMPTS:
                await anyio.sleep(wait)
                wait *= 2
        self.failures += 1
        _warn(
            f"could not notify {target.name} of {event['event']!r} ({why}); "
            f"the job is not affected (runner status {self.out})"
        )
        self._note(target, event, why)

    def _note(self, target: Target, event: dict[str, Any], error: str | None) -> None:
        """Record the delivery (or why it failed) for `runner status`; best effort."""
        path = self.out / NOTES
        entry = {"event": event["event"], "target": target.name, "at": time.time(),
                 "delivered": error is None, "error": error}  # fmt: skip
        try:
            notes = read_notes(self.out)
            notes.append(entry)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(orjson.dumps(notes[-_KEEP_NOTES:]))
            tmp.replace(path)
        except OSError:
            pass


def read_notes(out: Path) -> list[dict[str, Any]]:
    """The deliveries recorded in OUT (empty if none, or the file is unreadable)."""
    try:
        notes = orjson.loads((out / NOTES).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return []
    return [n for n in notes if isinstance(n, dict)] if isinstance(notes, list) else []


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
