"""The tier across a cluster: a bank that leases each (key, model)'s slots to the shards.

Every shard runs the usual lanes (pool.py), but a lane's limiter may only use the slots its
shard holds from the bank (`AdaptiveLimiter.set_lease`). A lease per request would cost a
Ray round-trip each; instead each shard's lease loop settles all its lanes in one call
every `tick`: it first gives back what it does not need (lowering its own limit before it
tells the bank), then reports its demand and takes what the bank grants (raising its limit
only after the grant). So the slots held by all shards never exceed the bank's level,
and the level never exceeds the cap: the cap is exact, and what lags by a tick is only
the spreading of slots, not their count.

The bank shares the level out by demand (water-filling): a shard that finishes or idles
gives its slots back and the busy ones take them. A 1302 seen by any shard lowers the
lane's level for all of them (the shared backoff), which grows back after quiet seconds.
The bank also carries the job's stop: the first job-fatal error one shard reports (a
refused account) stops every shard at its next tick.

A shard whose node is lost holds its slots until its retry starts, and that retry may wait
for a CPU that the other shards hold while they wait for those very slots. So a shard
silent for `STALE` seconds (a live one settles every tick) loses its slots to the others;
should it speak again, it is told, and starts from what it is granted then. Its requests
still in flight are the one way past the cap, and only for a shard stuck that long.

`SlotBank` is plain Python (a Ray actor in driver.py); `LeasedLanes` is the shard's side.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..errors import FatalAPIError, Interrupted
from ..outcome import Outcome
from ..pool import Lane, Lanes
from ..spec import Request

__all__ = ["STALE", "LeasedLanes", "SlotBank", "fair_shares"]

# (cap, slots given back, slots wanted, 1302s since the last report) per lane name
Report = tuple[int, int, int, int]
_GROW_AFTER = 2.0  # quiet seconds before a lowered level grows by an eighth
STALE = 10.0  # seconds without a settling after which a shard's slots go to the others


def fair_shares(total: int, demands: dict[int, int]) -> dict[int, int]:
    """Split `total` slots by demand: equal shares, and what one does not need goes round."""
    shares = dict.fromkeys(demands, 0)
    left = max(0, total)
    active = sorted(k for k, d in demands.items() if d > 0)
    while left > 0 and active:
        each = max(1, left // len(active))
        for k in list(active):
            give = min(each, demands[k] - shares[k], left)
            shares[k] += give
            left -= give
            if shares[k] >= demands[k]:
                active.remove(k)
            if left == 0:
                break
    return shares


class SlotBank:
    """Per lane: the cap, the level in force (the cap, or lower after 1302s), and the slots
    each shard holds and wants. Calls are served one at a time (a Ray actor's are)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, stale: float = STALE) -> None:
        self._clock, self._stale = clock, stale
        self.caps: dict[str, int] = {}
        self.level: dict[str, int] = {}
        self.held: dict[str, dict[int, int]] = {}
        self.wanted: dict[str, dict[int, int]] = {}
        self._quiet_since: dict[str, float] = {}
        self.refused: dict[str, int] = {}
        # Why the job stops: (message, code, status, interrupted), the first reason wins.
        self.stop: tuple[str, str | None, int | None, bool] | None = None
        self._seen: dict[int, float] = {}  # each shard's last settling
        self._revoked: set[int] = set()  # shards whose slots went to others while silent
        self._last_call = clock()

    def sync(
        self,
        shard: int,
        reports: dict[str, Report],
        fatal: tuple[str, str | None, int | None] | None = None,
    ) -> dict[str, Any]:
        now = self._clock()
        self._reclaim(now)
        revoked = shard in self._revoked
        self._revoked.discard(shard)
        self._seen[shard] = now
        replies: dict[str, tuple[int, int]] = {}
        if fatal is not None and self.stop is None:
            self.stop = (*fatal, False)
        for lane, (cap, given_back, wanted, refused) in reports.items():
            if lane not in self.caps:
                self.caps[lane] = self.level[lane] = cap
                self.held[lane], self.wanted[lane] = {}, {}
                self._quiet_since[lane] = now
            held = self.held[lane]
            held[shard] = max(0, held.get(shard, 0) - given_back)
            self.wanted[lane][shard] = wanted  # a stopping shard still needs slots to drain
            self._adjust(lane, refused, now)
            target = fair_shares(self.level[lane], self.wanted[lane]).get(shard, 0)
            free = self.level[lane] - sum(held.values())
            grant = max(0, min(free, target - held[shard]))
            held[shard] += grant
            replies[lane] = (grant, target)
        return {"lanes": replies, "stop": self.stop, "revoked": revoked}

    def _reclaim(self, now: float) -> None:
        """Take back the slots of the shards silent for `stale` seconds."""
        if now - self._last_call > self._stale / 2:
            # The bank itself was not answering (its process stalled): nobody's silence
            # counts, as every shard may have been waiting on it.
            self._seen = dict.fromkeys(self._seen, now)
        self._last_call = now
        for shard, seen in list(self._seen.items()):
            if now - seen > self._stale:
                self.reset(shard)
                self._revoked.add(shard)

    def _adjust(self, lane: str, refused: int, now: float) -> None:
        """The shared backoff: 1302s cut the level below what was out; quiet regrows it."""
        if refused:
            self.refused[lane] = self.refused.get(lane, 0) + refused
            out = sum(self.held[lane].values())
            if now - self._quiet_since[lane] > 0.5:  # one cut per burst of answers
                self.level[lane] = max(1, min(self.level[lane], out) - max(1, out // 10))
            self._quiet_since[lane] = now
        elif now - self._quiet_since[lane] >= _GROW_AFTER and self.level[lane] < self.caps[lane]:
            level = self.level[lane]
            self.level[lane] = min(self.caps[lane], level + max(1, level // 8))
            self._quiet_since[lane] = now

    def halt(self, message: str) -> None:
        """Stop every shard as a signal stops one process (the driver got the signal)."""
        if self.stop is None:
            self.stop = (message, None, None, True)

    def reset(self, shard: int) -> None:
        """A shard ended (or restarted after its worker was lost): it holds nothing."""
        self._seen.pop(shard, None)
        self._revoked.discard(shard)
        for lane in self.held:
            self.held[lane].pop(shard, None)
            self.wanted[lane].pop(shard, None)

    def stats(self) -> dict[str, Any]:
        return {
            lane: {
                "cap": self.caps[lane],
                "level": self.level[lane],
                "held": sum(self.held[lane].values()),
                "refused": self.refused.get(lane, 0),
            }
            for lane in self.caps
        }


@dataclass
class LeasedLanes(Lanes):
    """The lanes of one shard, whose limiters use only the slots leased from the bank."""

    bank: Any = None  # a SlotBank actor handle (or anything with the same `sync` awaitable)
    shard: int = 0
    tick: float = 0.02
    _targets: dict[tuple[int, str], int] = field(default_factory=dict)
    _seen_refused: dict[tuple[int, str], int] = field(default_factory=dict)
    _live: int = 0
    _closed: bool = False
    _started: bool = False

    def _stream(self, model: str) -> MemoryObjectSendStream[Request]:
        before = set(self.limiters)
        send = super()._stream(model)
        for key in set(self.limiters) - before:
            self.limiters[key].set_lease(0)  # before any worker runs: nothing until leased
        if not self._started:
            self._started = True
            self.task_group.start_soon(self._lease_loop)
        return send

    def close(self) -> None:
        super().close()
        self._closed = True

    async def _worker(
        self,
        lane: Lane,
        rows: MemoryObjectReceiveStream[Request],
        results: MemoryObjectSendStream[Outcome],
    ) -> None:
        # Counted from its first step: the workers start before the reader's next await,
        # so before `close`, and the lease loop ends only once the last one is done.
        self._live += 1
        try:
            await super()._worker(lane, rows, results)
        finally:
            self._live -= 1

    def _name(self, n: int, model: str) -> str:
        return f"{self.ctx.pool.items[n].fingerprint}/{model}"

    def _fatal(self) -> tuple[str, str | None, int | None] | None:
        reason = self.ctx.control.reason
        if isinstance(reason, FatalAPIError):
            return (str(reason), reason.code, reason.status)
        return None

    async def _sync(self, reports: dict[str, Report]) -> dict[str, Any]:
        ref = self.bank.sync.remote(self.shard, reports, self._fatal())
        reply: dict[str, Any] = await asyncio.wrap_future(ref.future())
        return reply

    async def _lease_loop(self) -> None:
        """Settle every lane with the bank once a tick, until the last worker is done."""
        pool = self.ctx.pool.items
        while True:
            done = self._closed and self._live <= 0
            reports: dict[str, Report] = {}
            names: dict[str, tuple[int, str]] = {}
            for key, lim in self.limiters.items():
                lease = lim.lease or 0
                wanted = 0
                if not done and pool[key[0]].retired is None:
                    wanted = min(lim.cap, lim.borrowed + lim.waiting)
                keep = min(self._targets.get(key, 0), wanted)
                back = max(0, min(lease - lim.borrowed, lease - keep))
                lim.set_lease(lease - back)  # lowered before the bank hears of it
                refused = lim.refused - self._seen_refused.get(key, 0)
                self._seen_refused[key] = lim.refused
                name = self._name(*key)
                names[name] = key
                reports[name] = (lim.cap, back, wanted, refused)
            reply = await self._sync(reports)
            if reply["revoked"]:  # silent too long: the bank lent this shard's slots out
                for lim in self.limiters.values():
                    lim.set_lease(0)
            for name, (grant, target) in reply["lanes"].items():
                lim = self.limiters[names[name]]
                lim.set_lease((lim.lease or 0) + grant)  # raised only once granted
                self._targets[names[name]] = target
            stop = reply["stop"]
            if stop is not None and self.ctx.control.reason is None:
                message, code, status, interrupted = stop
                self.ctx.control.stop(
                    Interrupted(message)
                    if interrupted
                    else FatalAPIError(message, code=code, status=status)
                )
            if done:
                return
            await anyio.sleep(self.tick)
