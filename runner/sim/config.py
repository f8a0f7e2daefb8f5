"""The simulator's knobs as one immutable value.

Every fault and limit is off by default so a bare ``SimConfig()`` behaves like a healthy,
unlimited platform. Runtime changes (``POST /_sim/config``, ``Simulator.update``) build a
new value through :func:`apply_updates`, which validates JSON-ish input, so the HTTP control
plane and the Python API share one set of rules.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["ErrorShape", "LatencyDist", "SimConfig", "apply_updates", "key_id", "public_view"]

LatencyDist = Literal["fixed", "lognormal"]
ErrorShape = Literal["nested", "flat", "siliconflow"]


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Knobs for one simulated platform; all defaults mean "no limits, no faults"."""

    # Seconds a request holds its concurrency slot before the answer is sent.
    latency: float = 0.0
    latency_dist: LatencyDist = "fixed"
    # Shape of the lognormal distribution; ``latency`` stays its mean.
    latency_sigma: float = 0.5
    # Whether a ``[[sim:CODE]]`` marker fails its request with CODE; False is the platform
    # "mended" (the same rows then succeed), as a `runner retry --code CODE` test needs.
    code_markers: bool = True
    # In-flight requests allowed per (API key, model); None means unlimited.
    concurrency_limit: int | None = None
    # Per-model overrides of ``concurrency_limit`` (the account tier differs by model).
    model_limits: dict[str, int] = field(default_factory=dict)
    # None accepts any non-empty bearer; otherwise only these keys, each with an optional
    # per-key limit that overrides the model and default limits.
    keys: dict[str, int | None] | None = field(default=None, repr=False)  # secrets: no repr
    # Requests per minute per key (sliding 60 s window); None means unlimited.
    rpm_limit: int | None = None
    # Probabilities per request of each random fault (drawn from a seeded RNG).
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_503: float = 0.0
    rate_drop: float = 0.0
    rate_stall: float = 0.0
    stall_seconds: float = 30.0
    # After this many billed requests every request gets 429 / 1113; None means unlimited.
    balance_requests: int | None = None
    # Per-key balances (billed requests each key may still run), apart from the global one:
    # a team's accounts run dry one at a time.
    key_balances: dict[str, int] = field(default_factory=dict, repr=False)  # secrets: no repr
    error_shape: ErrorShape = "nested"
    # Seconds an async task stays PROCESSING after its submission.
    task_seconds: float = 0.5
    # Seconds a server-side batch takes from creation to completed (validating for the
    # first tenth, then in_progress, then a short finalizing).
    batch_seconds: float = 1.0
    # When set, a batch expires once this many of its lines are done: they are billed and
    # downloadable, the rest are never run (the platform's 7-day auto-cancel, in small).
    batch_expire_after: int | None = None
    # Seconds a result URL stays downloadable after it was issued; None means forever.
    url_ttl: float | None = None
    # Queueing mode (a self-hosted server, sim/queueing.py): None means off; a number is
    # the server's decoding slots, with a FIFO queue in front of them instead of 1302s.
    queue_slots: int | None = None
    # In queueing mode, the seconds one answer holds its slot: a fixed part per answer plus
    # a part per completion token.
    service_seconds: float = 1.0
    service_per_token: float = 0.0
    # The fraction of its service a request still costs when its client left before it
    # was answered (the server notices only when it reaches a slot).
    abandon_cost: float = 1.0
    # Accept response_format {"type": "json_schema"} and answer in that schema, as vLLM,
    # llama.cpp and OpenAI do; the Z.ai platform documents only json_object (1214).
    json_schema: bool = False
    seed: int = 0
    # Words in a plain-text chat answer; None: 12-47, by the prompt's hash. A benchmark of
    # realistic answers (about 1 KB) sets 180.
    answer_words: int | None = None
    # Per-request-id and per-fingerprint maps grow with every request: a benchmark of a
    # million rows turns them off.
    ledger_ids: bool = True

    def limit_for(self, key: str, model: str) -> int | None:
        """The in-flight limit for one key and model: key beats model beats default."""
        if self.keys is not None:
            per_key = self.keys.get(key)
            if per_key is not None:
                return per_key
        per_model = self.model_limits.get(model)
        if per_model is not None:
            return per_model
        return self.concurrency_limit


_FIELDS = {f.name: f for f in dataclasses.fields(SimConfig)}
_FLOAT_FIELDS = {
    "latency",
    "latency_sigma",
    "stall_seconds",
    "task_seconds",
    "batch_seconds",
    "service_seconds",
    "service_per_token",
}
_RATE_FIELDS = {"rate_429", "rate_500", "rate_503", "rate_drop", "rate_stall", "abandon_cost"}
_OPT_INT_FIELDS = {
    "concurrency_limit",
    "rpm_limit",
    "balance_requests",
    "batch_expire_after",
    "queue_slots",
    "answer_words",
}


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number")
    if value < 0:
        raise ValueError(f"{name} must not be negative")
    return float(value)


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer")
    return value


def _coerce(name: str, value: Any) -> Any:
    """Check one knob value from JSON or Python and return it in its canonical type."""
    if name in _FLOAT_FIELDS:
        return _number(name, value)
    if name in _RATE_FIELDS:
        rate = _number(name, value)
        if rate > 1:
            raise ValueError(f"{name} must be a probability in [0, 1]")
        return rate
    if name in _OPT_INT_FIELDS:
        return None if value is None else _count(name, value)
    if name == "url_ttl":
        return None if value is None else _number(name, value)
    if name == "seed":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("seed must be an integer")
        return value
    if name in ("ledger_ids", "json_schema", "code_markers"):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be a boolean")
        return value
    if name == "latency_dist":
        if value not in ("fixed", "lognormal"):
            raise ValueError("latency_dist must be 'fixed' or 'lognormal'")
        return value
    if name == "error_shape":
        if value not in ("nested", "flat", "siliconflow"):
            raise ValueError("error_shape must be 'nested', 'flat' or 'siliconflow'")
        return value
    if name == "model_limits":
        if not isinstance(value, Mapping):
            raise ValueError("model_limits must be an object of model -> limit")
        return {str(k): _count(f"model_limits[{k}]", v) for k, v in value.items()}
    if name == "key_balances":
        if not isinstance(value, Mapping):
            raise ValueError("key_balances must be an object of key -> billed requests")
        balances: dict[str, int] = {}
        for k, v in value.items():
            if not isinstance(k, str) or not k:
                raise ValueError("key_balances keys must be non-empty strings")
            balances[k] = _count("key_balances[...]", v)
        return balances
    if name == "keys":
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise ValueError("keys must be an object of key -> limit or null")
        keys: dict[str, int | None] = {}
        for k, v in value.items():
            if not isinstance(k, str) or not k:
                raise ValueError("keys must be non-empty strings")
            keys[k] = None if v is None else _count("keys[...]", v)
        return keys
    raise ValueError(f"unknown knob {name!r}")


def apply_updates(config: SimConfig, updates: Mapping[str, Any]) -> SimConfig:
    """Return ``config`` with ``updates`` applied; raise ValueError naming the bad knob."""
    changes: dict[str, Any] = {}
    for name, value in updates.items():
        if name not in _FIELDS:
            raise ValueError(f"unknown knob {name!r}")
        changes[name] = _coerce(name, value)
    return dataclasses.replace(config, **changes)


def key_id(key: str) -> str:
    """The only form of an API key the simulator ever shows: 12 hex chars of its sha256."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def public_view(config: SimConfig) -> dict[str, Any]:
    """The config as JSON-ready data with every API key replaced by its key id."""
    view = {name: getattr(config, name) for name in _FIELDS}
    if config.keys is not None:
        view["keys"] = {key_id(k): v for k, v in config.keys.items()}
    view["model_limits"] = dict(config.model_limits)
    view["key_balances"] = {key_id(k): v for k, v in config.key_balances.items()}
    return view
