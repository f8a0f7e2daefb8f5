"""The driver's inbox: how the shards' outcomes reach the job's checkpoint without a shared
disk.

A shard keeps its checkpoint on its own node (shard.py) and ships what it commits there to
the inbox in batches (shipper.py); the driver takes the batches every fraction of a second
and merges them into DIR/checkpoint.sqlite (merge.py), which only the driver ever opens.
The inbox is a Ray actor pinned to the driver's node, so it lives and dies with the driver:
a batch it holds is either merged or, if the driver dies first, sent again by the resume.

A batch stays in the inbox until the driver's next take says it is merged, so a driver
interrupted between taking and merging (Ctrl-C, SIGTERM) takes it again; merging a batch
twice only writes the same rows again.

A shard starting (for the first time, or again on another node after its worker or node
was lost) says hello first and waits: the driver answers with the rows it already holds
of the shard's window (`Mail.hellos`), so the shard skips them and sends none of them
twice. A hello is answered only after the batches taken with it are merged, so the answer
holds every batch the inbox accepted before the hello.

The inbox holds at most `cap` bytes of batches not yet merged: a shard's `put` waits while
it is full, so a driver slower than its shards slows them instead of filling its memory.

`Inbox` is plain Python with async methods (an async actor in driver.py, tested without Ray).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Batch", "Inbox", "Mail"]

CAP = 64 << 20  # bytes of batches the driver has not taken yet


@dataclass
class Batch:
    """What one shard committed since its last batch, with local seqs (the driver adds the
    window's first seq). `rows` are tuples in `COLUMNS` order; `gone` the seqs it forgot
    (an async row's submit intent the platform refused); `keys` its key states when they
    changed; `files` artifacts sent back (path under DIR -> bytes) when they were not
    uploaded to --results-to."""

    shard: int
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    gone: list[int] = field(default_factory=list)
    keys: list[dict[str, Any]] | None = None
    files: dict[str, bytes] = field(default_factory=dict)

    def size(self) -> int:
        """About the bytes it holds: what the inbox's cap counts."""
        n = 64 * len(self.rows) + sum(len(v) for v in self.files.values())
        for row in self.rows:
            for value in row:
                if isinstance(value, str | bytes):
                    n += len(value)
        return n

    def __bool__(self) -> bool:
        return bool(self.rows or self.gone or self.keys or self.files)


@dataclass
class Mail:
    """What the driver takes: the batches it has not merged yet (`last` is the number of
    the last one, which its next take names as merged), then the shards waiting for their
    rows as (shard, hello, whether it wants them: a shard whose node kept its checkpoint
    does not)."""

    batches: list[Batch]
    last: int
    hellos: list[tuple[int, int, bool]]


class Inbox:
    def __init__(self, cap: int = CAP) -> None:
        self._cap = cap
        self._batches: list[tuple[int, Batch, int]] = []  # (number, batch, size), in order
        self._bytes = 0
        self._numbered = 0
        # shard -> (its waiting hello's number, the answer to come, whether it wants rows)
        self._hellos: dict[int, tuple[int, asyncio.Future[list[tuple[Any, ...]]], bool]] = {}
        self._serial = 0
        self._greeted: asyncio.Event | None = None
        self._room: asyncio.Event | None = None

    def _events(self) -> tuple[asyncio.Event, asyncio.Event]:
        # Made on first use, on the actor's event loop.
        if self._greeted is None or self._room is None:
            self._greeted, self._room = asyncio.Event(), asyncio.Event()
        return self._greeted, self._room

    async def put(self, batch: Batch) -> None:
        """Accept a shard's batch; waits while the inbox is full (one batch always fits)."""
        _, room = self._events()
        size = batch.size()
        while self._batches and self._bytes + size > self._cap:
            room.clear()
            await room.wait()
        self._numbered += 1
        self._batches.append((self._numbered, batch, size))
        self._bytes += size

    async def hello(self, shard: int, wants_rows: bool) -> list[tuple[Any, ...]]:
        """A shard starts: wait for the rows of its window the driver holds (local seqs)."""
        greeted, _ = self._events()
        old = self._hellos.get(shard)
        if old is not None:  # an attempt that died waiting: its successor asks again
            old[1].cancel()
        self._serial += 1
        future: asyncio.Future[list[tuple[Any, ...]]] = asyncio.get_running_loop().create_future()
        self._hellos[shard] = (self._serial, future, wants_rows)
        greeted.set()
        return await future

    async def take(self, merged: int, wait: float) -> Mail:
        """Forget the batches up to number `merged` (the driver has them in its checkpoint),
        then return what waits after `wait` seconds, or at once when a shard says hello
        (its start waits for the answer). Until the driver says it merged a batch, every
        take returns it again: a driver interrupted between a take and its merge (a
        signal) loses nothing. Batches do not wake the driver: a take every `wait`
        seconds merges what several shards sent, in one transaction."""
        greeted, room = self._events()
        while self._batches and self._batches[0][0] <= merged:
            self._bytes -= self._batches.pop(0)[2]
            room.set()
        if not self._hellos:
            greeted.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(greeted.wait(), wait)
        hellos = [(k, serial, wants) for k, (serial, _, wants) in self._hellos.items()]
        last = self._batches[-1][0] if self._batches else merged
        return Mail([b for _, b, _ in self._batches], last, hellos)

    async def answer(self, shard: int, serial: int, rows: list[tuple[Any, ...]]) -> None:
        """The driver's answer to hello `serial`; one that was asked again since is left
        waiting for the answer to its newer hello."""
        entry = self._hellos.get(shard)
        if entry is None or entry[0] != serial:
            return
        del self._hellos[shard]
        if not entry[1].done():
            entry[1].set_result(rows)
