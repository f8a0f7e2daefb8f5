"""What every peer script shares: its command line, the spec reader and the one-line report.

A peer is a stand-alone process so the harness can read its CPU time and peak RSS from
``wait4``. It writes nothing durable: its only output is one JSON line on stdout, with the
client-side window (first request sent, last answer read, wall-clock seconds since the
epoch so the harness can compare them with the simulator's) and latency percentiles.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

try:
    import orjson

    _loads = orjson.loads

    def _dumps(doc: Any) -> str:
        return orjson.dumps(doc).decode()
except ImportError:  # the Curator venv may lack orjson; json is only used at the edges
    import json

    _loads = json.loads

    def _dumps(doc: Any) -> str:
        return json.dumps(doc)


__all__ = ["Report", "parse_args", "read_spec"]


def parse_args(doc: str | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    p.add_argument("--spec", required=True, help="JSONL spec (custom_id, url, body).")
    p.add_argument("--base-url", required=True, help="API base URL, .../api/paas/v4")
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--api-key", default="bench.key")
    return p.parse_args()


def read_spec(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (custom_id, body) per non-blank line."""
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                row = _loads(line)
                yield row["custom_id"], row["body"]


@dataclass
class Report:
    """Counters a peer fills while it runs; ``emit`` prints them as one JSON line."""

    tool: str
    ok: int = 0
    failed: int = 0
    rate_limited: int = 0
    latencies: list[float] = field(default_factory=list)
    t_first: float | None = None
    t_last: float | None = None
    errors: dict[str, int] = field(default_factory=dict)

    def sent(self) -> float:
        """Mark a request going out; returns its start time (perf counter)."""
        if self.t_first is None:
            self.t_first = time.time()
        return time.perf_counter()

    def done(self, started: float, ok: bool, error: str | None = None) -> None:
        self.latencies.append(time.perf_counter() - started)
        self.t_last = time.time()
        if ok:
            self.ok += 1
        else:
            self.failed += 1
            key = (error or "error")[:120]
            self.errors[key] = self.errors.get(key, 0) + 1

    def emit(self) -> None:
        lat = sorted(self.latencies)

        def pct(q: float) -> float | None:
            return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None

        doc = {
            "tool": self.tool,
            "ok": self.ok,
            "failed": self.failed,
            "rate_limited": self.rate_limited,
            "t_first": self.t_first,
            "t_last": self.t_last,
            "p50": pct(0.50),
            "p99": pct(0.99),
            "errors": dict(sorted(self.errors.items(), key=lambda kv: -kv[1])[:5]),
        }
        sys.stdout.write(_dumps(doc) + "\n")
        sys.stdout.flush()
