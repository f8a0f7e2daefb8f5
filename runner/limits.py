"""The account tier as a limiter that gives way under 429s and grows back after them.

A count of slots whose size is adjusted once per window of answers (at least half a
second and a round of `current` answers): lowering it makes new acquisitions wait,
raising it wakes waiters. Decisions look at the *fraction* of 429s in the window, not at
single 429s, because the two kinds mean different things:

- 1302 (or a bare 429) says we are over the account's concurrency. Shrink in proportion
  to the overshoot and remember the level that was refused as a *ceiling*: the fewest
  requests we had on the wire when a 1302 came back (not the limiter's level, which may
  have been lowered while older requests were still out); grow back by an eighth per
  quiet window up to one slot below it and hold there. Touching the ceiling
  again is a *probe*: it costs a few 429s, so it waits `PROBE_FIRST` seconds, and each time
  the same ceiling refuses again the wait doubles (up to `PROBE_MAX`). A refusal below
  the ceiling is a new, lower ceiling (its wait starts again); a probe that passes a whole
  window means the limit was raised, so the ceiling is forgotten and growth resumes.
  Holding below a known ceiling instead of probing it every window is what keeps a job
  whose real limit sits under its configured tier at well under one 429 a second.
- 1303 / 1305 / 1312 say the platform is busy: a few percent is noise that must not cost
  throughput; a storm (over 15 %) shrinks the limit, to half the cap at most, since
  random refusals don't stop when we slow down; a quieter window grows it back by an
  eighth, so half the cap is regained in about six windows (three seconds).

- Queueing (a self-hosted server: vLLM, llama.cpp, SGLang) says nothing: the server takes
  every request and puts it in a FIFO in front of its decoding slots, so past its capacity
  more concurrency only adds latency, then timeouts, and a request that timed out in the
  queue still costs the server its work when it reaches a slot. Two signals: timeouts
  (over `_QUIET` of a window's answers: every provider), and, for a server of unknown
  capacity (`probe=True`), a window's mean latency over `_GRADIENT` times its base (the
  lowest window mean seen; it drifts up 1 % a window only while no more is in flight than
  when it was measured, so it follows a change of prompts but not our own queue).
  Either sets the limit by Little's law to the concurrency the server really serves, the
  window's answers per second times the base latency, plus a little so no slot idles
  between answers, and holds it there under a ceiling one above, probed like a 1302
  ceiling; a window of nothing but timeouts halves it. Only requests sent since the limit
  was last lowered count (their latency, their timeouts): the others waited in the queue
  the old limit made, and would cut the new one again. Such a server also starts at
  `PROBE_START` in flight rather than at the cap (which is only the user's guess) and
  doubles per quiet window until the first signal:
  a first wave of `--concurrency` requests would already be in the queue, and its
  timeouts already paid for, before any answer could say the server was full.

The slots themselves are a small counter with a queue of waiters (`_Slots`), not anyio's
CapacityLimiter: a lane keeps a quarter more workers than slots, so every row waits for a
slot once, and at 2,000 in flight anyio's wait (a cancellation checkpoint that looks up
the current task and walks its scopes, then an Event) took about a quarter of the job's
profile samples (bench/profile_run.py). Waiting on a bare future is cancellable by anyio's
scopes like any await on asyncio, which is the only backend the runner uses.

The clock is injectable so the policy is tested step by step, without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType

import anyio
from anyio.lowlevel import checkpoint

__all__ = ["PROBE_FIRST", "PROBE_MAX", "PROBE_START", "AdaptiveLimiter"]

_STORM = 0.15  # busy-platform 429s above this fraction shrink the limit
_QUIET = 0.08  # and below this fraction let it grow
# Seconds to hold one slot under a ceiling before touching it again; doubled per refusal.
# The first wait is longer than the ten clean seconds that count as converged.
PROBE_FIRST = 15.0
PROBE_MAX = 300.0
# A server of unknown capacity: where the limit starts, and the latency over the base that
# means requests are queueing (half again: a queue half as deep as the slots; a window's
# mean of 20 answers moves by far less with the mix of long and short answers).
PROBE_START = 4
_GRADIENT = 1.5
_BASE_DRIFT = 1.01


class _Slots:
    """At most `total` holders; raising `total` (or a release) hands slots to waiters in turn."""

    def __init__(self, total: int) -> None:
        self._total = total
        self.in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def total(self) -> int:
        return self._total

    @total.setter
    def total(self, value: int) -> None:
        self._total = value  # lowering it takes nothing back: holders release as they finish
        self._hand_on()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def acquire_nowait(self) -> None:
        if self.in_use >= self._total or self._waiters:
            raise anyio.WouldBlock
        self.in_use += 1

    async def acquire(self) -> None:
        if self.in_use < self._total and not self._waiters:
            self.in_use += 1
            try:
                await checkpoint()
            except BaseException:
                self.release()  # cancelled at the checkpoint: the caller never holds it
                raise
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot, but cancelled before taking it: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        self.in_use -= 1
        self._hand_on()

    def keep(self) -> bool:
        """Whether a holder may keep its slot for its next request instead of releasing it:
        False once the total has been lowered under the slots in use."""
        return self.in_use <= self._total

    def _hand_on(self) -> None:
        waiters = self._waiters
        while waiters and self.in_use < self._total:
            waiter = waiters.popleft()
            if not waiter.done():
                self.in_use += 1
                waiter.set_result(None)


class AdaptiveLimiter:
    """A slot per request on the wire, at most `current` of them; `current` moves in [1, cap].

    A holder is whoever acquired (not a task, as in anyio): pool workers acquire and
    release around one request."""

    def __init__(
        self,
        cap: int,
        *,
        window: float = 0.5,
        floor: int = 1,
        clock: Callable[[], float] = time.monotonic,
        probe: bool = False,
    ) -> None:
        self.cap = max(1, cap)
        # `probe`: the cap is a guess, not the server's published tier (see the docstring).
        self.probe = probe
        self.current = min(self.cap, PROBE_START) if probe else self.cap
        self._tokens = _Slots(self.current)  # its total mirrors `current`
        self._slow_start = probe and self.current < self.cap
        # The lowest mean latency of a window of answers, drifting up (queueing's baseline).
        self.base_latency: float | None = None
        self._base_level = self.current  # the limit when the base was last measured
        self._cut_at = float("-inf")  # when the limit was last lowered
        self._window = window
        self._floor = max(1, min(floor, self.cap))
        self._clock = clock
        self.ceiling: int | None = None  # the lowest level refused with 1302, if any
        self.probe_wait = PROBE_FIRST  # hold under `ceiling` this long before touching it
        self._probe_at = 0.0
        self._reset(clock())
        # A moving average of successful requests' latency (capped at 5 s).
        self.typical_latency = 0.0
        # A shard of a job on Ray may use only the slots it leased from the job's bank
        # (ray_engine/slots.py); None outside one. Every 1302 is counted for the bank too.
        self.lease: int | None = None
        self.refused = 0
        # Totals for the metrics (--metrics-port): requests sent under it, and its 429s.
        self.sent = 0
        self.throttled = 0

    def _reset(self, now: float) -> None:
        self._start = now
        self._ok = 0
        self._busy = 0
        self._over = 0
        self._timeouts = 0
        self._fresh = 0  # successes sent since the limit was last lowered
        self._latency = 0.0  # their latencies, summed
        self._refused = self.cap  # the fewest slots in use at a 1302 in this window

    @property
    def borrowed(self) -> int:
        """Slots in use now."""
        return self._tokens.in_use

    @property
    def waiting(self) -> int:
        """Borrowers waiting for a slot."""
        return self._tokens.waiting

    def set_lease(self, slots: int) -> None:
        """Hold the slots to `slots` whatever `current` says (a shard's lease)."""
        self.lease = slots
        self._tokens.total = self._limit()

    def _limit(self) -> int:
        return self.current if self.lease is None else min(self.current, self.lease)

    def acquire_nowait(self) -> None:
        """Take a slot if one is free (raises anyio.WouldBlock otherwise) without yielding:
        `async with` costs two loop checkpoints, which show at thousands of rows a second."""
        self._tokens.acquire_nowait()

    async def acquire(self) -> None:
        await self._tokens.acquire()

    def release(self) -> None:
        self._tokens.release()

    def keep(self) -> bool:
        """Whether a holder may go on to its next request with the slot it holds (False
        once the limit fell under the slots in use: it must release)."""
        return self._tokens.keep()

    async def __aenter__(self) -> None:
        await self._tokens.acquire()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._tokens.release()

    def rate_limited(self, over_limit: bool = True, in_flight: int | None = None) -> bool:
        """Note a 429 (`over_limit`: 1302 / bare 429); True when the limit changed.

        `in_flight`: our requests on the wire when it came back, this one included; by
        default the slots now taken, which is right while the refused request still holds
        its slot (Lanes.call notes it there).
        """
        self.throttled += 1
        if over_limit:
            self._over += 1
            self.refused += 1
            if in_flight is None:
                in_flight = self._tokens.in_use
            self._refused = min(self._refused, max(1, in_flight))
        else:
            self._busy += 1
        return self._maybe_adjust()

    def timed_out(self, sent_at: float | None = None) -> bool:
        """Note a request sent at `sent_at` (this limiter's clock) that got no answer in
        time; True when the limit changed. One sent before the limit was last lowered
        says nothing about the new limit (it waited in the queue the old one made)."""
        if sent_at is not None and sent_at < self._cut_at:
            return False
        self._timeouts += 1
        return self._maybe_adjust()

    def succeeded(self, latency: float = 0.0) -> bool:
        """Note a success and its latency; True when the limit changed."""
        self._ok += 1
        if self._clock() - latency >= self._cut_at:
            # Only answers to requests sent under the current limit say what it does: the
            # rest waited in the queue of the old one, and would cut it again.
            self._fresh += 1
            self._latency += latency
        self.typical_latency += (min(latency, 5.0) - self.typical_latency) * 0.05
        if self._ok < self.current:  # cheap exit on the hot path
            return False
        return self._maybe_adjust()

    def _maybe_adjust(self) -> bool:
        now = self._clock()
        answers = self._ok + self._busy + self._over + self._timeouts
        current = self.current
        elapsed = now - self._start
        if elapsed < self._window or answers < min(20, current):
            return False
        over, busy = self._over / answers, self._busy / answers
        base = self._observe_latency()
        new = current
        queueing = self._timeouts / answers > _QUIET or (
            self.probe
            and base is not None
            and self._fresh > 0
            and self._latency / self._fresh > _GRADIENT * base
        )
        if self._over:
            level = self._refused
            self._refused_at(level, now)
            if level <= current:  # else they were sent before the last cut: it stands
                new = min(level - 1, int(level * (1 - over / 2)))
        elif queueing:
            new = self._served(elapsed, base, now)
        elif busy > _STORM:
            # Random platform 429s don't fall as we shrink: never give up more than half.
            new = max(self.cap // 2, int(current * (1 - busy / 2)))
        elif busy < _QUIET:
            new = self._grown(current, now)
        self._reset(now)
        new = max(self._floor, min(self.cap, new))
        if new < current:
            self._slow_start = False
            self._cut_at = now
        if new == current:
            return False
        self.current = new
        self._tokens.total = self._limit()
        return True

    def _observe_latency(self) -> float | None:
        """Fold this window's mean latency into the base; the base before it is returned,
        so a window compares with what came before it."""
        base = self.base_latency
        if self._fresh:
            mean = self._latency / self._fresh
            if base is None or mean <= base:
                self.base_latency = max(mean, 1e-3)
                self._base_level = self.current
            elif self.current <= self._base_level:
                # Slower at no more in flight than the base was measured at: the prompts or
                # the server changed, not our queue. Follow, slowly. (Drifting at a higher
                # level would follow our own queue up and never see it.)
                self.base_latency = min(base * _BASE_DRIFT, mean)
        return base

    def _served(self, elapsed: float, base: float | None, now: float) -> int:
        """The limit after a window that queued: what the server really serves at once
        (Little's law: answers per second x the latency without a queue), plus a margin so
        a slot never waits for our next request; held under a ceiling one above."""
        if not self._ok:
            # Only timeouts, of requests sent under this limit: nothing was answered in
            # time, so there is no rate to size the limit by. Halve it.
            new = max(self._floor, self.current // 2)
            self._refused_at(new + 1, now)
            return new
        rate = self._ok / elapsed
        serving = rate * (base if base is not None else 0.0)
        new = math.ceil(serving) + max(1, math.ceil(math.sqrt(serving) / 2))
        new = max(self._floor, min(new, self.current - 1))
        self._refused_at(new + 1, now)
        return new

    def _refused_at(self, level: int, now: float) -> None:
        """1302s at `level`: the same ceiling again doubles its wait, a lower one starts anew."""
        if self.ceiling is not None and level >= self.ceiling:
            if now < self._probe_at:
                return  # late answers to the probe already counted
            self.probe_wait = min(PROBE_MAX, self.probe_wait * 2)
        else:
            self.ceiling = level
            self.probe_wait = PROBE_FIRST
        self._probe_at = now + self.probe_wait

    def _grown(self, current: int, now: float) -> int:
        """The level after a quiet window: an eighth more, but hold below a known ceiling."""
        step = max(1, current // 8)
        ceiling = self.ceiling
        if ceiling is None:
            return current * 2 if self._slow_start else current + step
        if current >= ceiling:
            # A whole quiet window at the ceiling: the limit was raised. Grow freely again.
            self.ceiling = None
            self.probe_wait = PROBE_FIRST
            return current + step
        if current < ceiling - 1:
            return min(ceiling - 1, current + step)
        return ceiling if now >= self._probe_at else current
