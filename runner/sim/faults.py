"""Admission control: who may call, how often, how many at once, and what goes wrong.

The order of checks mirrors what a client can observe on the platform: authentication
first (401), then account state (1113 balance, 1303 rate), then prompt markers and random
faults, and last the per-(key, model) concurrency tier (1302), which is refused at once
rather than queued - the platform does not hold a request to wait for a free slot.
All randomness comes from one RNG seeded by ``SimConfig.seed`` so a run can be replayed.
"""

from __future__ import annotations

import math
import random
import re
from collections import deque
from dataclasses import dataclass

from runner.sim.config import SimConfig, key_id
from runner.sim.errors import ApiError
from runner.sim.ledger import Ledger

__all__ = ["NO_MARKERS", "Gate", "Markers", "read_markers"]

_MARKER_RE = re.compile(r"\[\[sim:([A-Za-z0-9_-]+)\]\]")
_RPM_WINDOW = 60.0
_KEY_CACHE_MAX = 4096


@dataclass(slots=True, frozen=True)
class Markers:
    """What ``[[sim:...]]`` markers in a prompt ask for."""

    code: int | None = None
    task_fail: bool = False
    sensitive: bool = False
    # ``bad-json-once`` / ``wrong-type-once``: the first JSON answer to a conversation is
    # spoilt (cut short, or a field mistyped); asked again, the model answers well, as real
    # models usually do (see ``structured.opening_key`` for what "the same conversation" is).
    spoil_once: str | None = None


NO_MARKERS = Markers()


def read_markers(texts: list[str]) -> Markers:
    """Parse markers from prompt texts; the first numeric marker decides the error."""
    code: int | None = None
    task_fail = sensitive = False
    spoil: str | None = None
    for text in texts:
        for name in _MARKER_RE.findall(text):
            if name == "task-fail":
                task_fail = True
            elif name == "sensitive":
                sensitive = True
            elif name in _SPOIL_ONCE and spoil is None:
                spoil = _SPOIL_ONCE[name]
            elif name.isdigit() and code is None:
                code = int(name)
    return Markers(code, task_fail, sensitive, spoil)


_SPOIL_ONCE = {"bad-json-once": "bad-json", "wrong-type-once": "wrong-type"}


class Gate:
    """Per-key and per-(key, model) account state, consulted once per request."""

    def __init__(self, config: SimConfig, ledger: Ledger) -> None:
        self.ledger = ledger
        self.rng = random.Random(config.seed)
        self.config = config
        self._fault_edges: tuple[float, float, float, float, float] = (0, 0, 0, 0, 0)
        self._key_ids: dict[str, str] = {}
        self._windows: dict[str, deque[float]] = {}
        self._slots: dict[tuple[str, str], int] = {}
        # Balance is consumed by billed requests; in-flight billable requests reserve a
        # credit so that concurrent requests cannot overshoot ``balance_requests``.
        self.billed = 0
        self._reserved = 0
        # The same per key id, for keys with a balance of their own (``key_balances``).
        self._key_balance: dict[str, int] = {}
        self._key_billed: dict[str, int] = {}
        self._key_reserved: dict[str, int] = {}
        self.configure(config)

    def configure(self, config: SimConfig) -> None:
        if config.seed != self.config.seed:
            self.rng.seed(config.seed)
        self.config = config
        self._key_balance = {key_id(k): n for k, n in config.key_balances.items()}
        edges = []
        total = 0.0
        for rate in (config.rate_429, config.rate_500, config.rate_503):
            total += rate
            edges.append(total)
        total += config.rate_drop
        edges.append(total)
        total += config.rate_stall
        edges.append(total)
        self._fault_edges = (edges[0], edges[1], edges[2], edges[3], edges[4])

    def reset_usage(self) -> None:
        """Forget consumed balance and the RPM windows (in-flight slots are live state)."""
        self.billed = 0
        self._key_billed.clear()
        self._windows.clear()

    def authenticate(self, key: str) -> str:
        """Return the key id for an accepted key; raise 401 (1001 / 1002) otherwise."""
        if not key:
            raise ApiError(1001)
        keys = self.config.keys
        if keys is not None and key not in keys:
            raise ApiError(1002)
        kid = self._key_ids.get(key)
        if kid is None:
            if len(self._key_ids) >= _KEY_CACHE_MAX:
                self._key_ids.clear()
            kid = self._key_ids[key] = key_id(key)
        return kid

    def check_account(self, kid: str, now: float, billable: bool) -> None:
        """Balance (1113) then requests-per-minute (1303); reserves a credit if billable."""
        limit = self.config.balance_requests
        if limit is not None and self.billed + self._reserved >= limit:
            self.ledger.fault("1113", kid)
            raise ApiError(1113)
        own = self._key_balance.get(kid)
        if own is not None:
            used = self._key_billed.get(kid, 0) + self._key_reserved.get(kid, 0)
            if used >= own:
                self.ledger.fault("1113", kid)
                raise ApiError(1113)
        rpm = self.config.rpm_limit
        if rpm is not None:
            window = self._windows.get(kid)
            if window is None:
                window = self._windows[kid] = deque()
            horizon = now - _RPM_WINDOW
            while window and window[0] <= horizon:
                window.popleft()
            if len(window) >= rpm:
                self.ledger.fault("1303", kid)
                raise ApiError(1303)
            window.append(now)
        if billable:
            self._reserved += 1
            if own is not None:
                self._key_reserved[kid] = self._key_reserved.get(kid, 0) + 1

    def settle(self, billed: bool, kid: str = "") -> None:
        """Release the credit reserved by ``check_account``; consume it if billed."""
        self._reserved -= 1
        if billed:
            self.billed += 1
        if kid in self._key_balance:
            self._key_reserved[kid] -= 1
            if billed:
                self._key_billed[kid] = self._key_billed.get(kid, 0) + 1

    def in_flight_by_key(self) -> dict[str, int]:
        """Requests holding a concurrency slot now, per key id (all models together)."""
        out: dict[str, int] = {}
        for (kid, _model), n in self._slots.items():
            out[kid] = out.get(kid, 0) + n
        return out

    def draw_fault(self) -> str | None:
        """None, or one of "429", "500", "503", "drop", "stall" by the configured rates."""
        edges = self._fault_edges
        if edges[4] <= 0.0:
            return None
        u = self.rng.random()
        if u >= edges[4]:
            return None
        if u < edges[0]:
            return "429"
        if u < edges[1]:
            return "500"
        if u < edges[2]:
            return "503"
        return "drop" if u < edges[3] else "stall"

    def acquire(self, key: str, kid: str, model: str) -> None:
        """Take a concurrency slot or raise 1302 at once (the tier refuses, never queues)."""
        slot = (kid, model)
        now = self._slots.get(slot, 0)
        limit = self.config.limit_for(key, model)
        if limit is not None and now >= limit:
            self.ledger.fault("1302", kid)
            raise ApiError(1302)
        self._slots[slot] = now + 1
        self.ledger.concurrency(kid, model, now + 1)

    def release(self, kid: str, model: str) -> None:
        slot = (kid, model)
        left = self._slots[slot] - 1
        if left:
            self._slots[slot] = left
        else:
            del self._slots[slot]

    def latency(self) -> float:
        """Seconds to hold the slot: fixed, or lognormal with mean ``latency``."""
        config = self.config
        mean = config.latency
        if mean <= 0.0:
            return 0.0
        if config.latency_dist == "fixed" or config.latency_sigma <= 0.0:
            return mean
        sigma = config.latency_sigma
        return self.rng.lognormvariate(math.log(mean) - sigma * sigma / 2, sigma)
