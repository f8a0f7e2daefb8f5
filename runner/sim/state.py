"""The simulated platform's state: knobs, ledger, admission gate, tasks and URL signer.

One object owns all of it so the HTTP control plane (``/_sim/*``) and the in-process
``Simulator`` API change the same things the same way.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from typing import Any

from runner.sim.batches import BatchStore
from runner.sim.config import SimConfig, apply_updates, public_view
from runner.sim.faults import Gate
from runner.sim.ledger import Ledger
from runner.sim.queueing import ServiceQueue
from runner.sim.tasks import Signer, TaskStore

__all__ = ["SimState"]


class SimState:
    """Everything a request may read or change; lives in the server's event loop."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config if config is not None else SimConfig()
        self.seed_bytes = self._seed_bytes(self.config.seed)
        self.ledger = Ledger(track_ids=self.config.ledger_ids)
        self.gate = Gate(self.config, self.ledger)
        self.tasks = TaskStore(self.ledger)
        self.signer = Signer(self.config.seed)
        self.batches = BatchStore()
        # Queueing mode: the server's slots and the FIFO in front of them (None: off).
        self.queue: ServiceQueue | None = None
        self._queue_for(self.config)
        # Ids are unique per simulator process: a random instance prefix plus a counter.
        self._id_prefix = os.urandom(4).hex()
        self._counter = itertools.count(1)
        # Prompts whose ``*-once`` marker has fired (see ``faults.Markers.spoil_once``).
        self._spoilt: set[bytes] = set()

    @staticmethod
    def _seed_bytes(seed: int) -> bytes:
        return f"{seed}\n".encode()

    def new_id(self) -> str:
        return f"{self._id_prefix}{next(self._counter):012d}"

    def first_time(self, key: bytes) -> bool:
        """True the first time ``key`` is seen by this simulator, False ever after."""
        if key in self._spoilt:
            return False
        self._spoilt.add(key)
        return True

    def update(self, updates: Mapping[str, Any]) -> SimConfig:
        """Apply knob changes (validated; raises ValueError) and return the new config."""
        config = apply_updates(self.config, updates)
        self.config = config
        self.seed_bytes = self._seed_bytes(config.seed)
        self.gate.configure(config)
        self.ledger.track_ids = config.ledger_ids
        self._queue_for(config)
        return config

    def _queue_for(self, config: SimConfig) -> None:
        slots = config.queue_slots
        if not slots:
            self.queue = None
        elif self.queue is None:
            self.queue = ServiceQueue(slots)
        else:
            self.queue.resize(slots)

    def reset(self) -> None:
        """Zero the ledger and the account's consumption; keep in-flight work and tasks."""
        self.ledger.reset()
        self.gate.reset_usage()

    def stats(self, now: float) -> dict[str, Any]:
        self.tasks.settle(now)
        snap = self.ledger.snapshot()
        snap["in_flight_by_key"] = self.gate.in_flight_by_key()
        if self.queue is not None:
            snap["server_work"]["queued"] = self.queue.queued
            snap["server_work"]["busy"] = self.queue.busy
        return snap

    def public_config(self) -> dict[str, Any]:
        return public_view(self.config)
