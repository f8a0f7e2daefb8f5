"""Latency percentiles and histograms in memory that does not grow with the row count.

The report kept every latency to sort it: 1.1 GB at ten million rows. A latency is counted
instead in a bin of a fixed log scale, 230 bins a decade (each 1 % wide), so a percentile
is within 0.5 % of the exact nearest-rank value and clamped to the smallest and largest
value seen: one value, or values all alike, come back exact. Ten of the fine bins' coarse
neighbours (23 fine bins each, the same edges as ``log10 x 10``) make the page's histogram,
which is therefore exactly what counting every value in those coarse bins would give.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["LatencySketch"]

_FINE = 230  # bins per decade
_COARSE = 10  # the histogram's bins per decade
_PER_COARSE = _FINE // _COARSE
_FLOOR = 1e-4  # seconds: anything faster is counted here (as the histogram always did)


class LatencySketch:
    __slots__ = ("_bins", "count", "max", "min")

    def __init__(self) -> None:
        self._bins: dict[int, int] = {}
        self.count = 0
        self.min = math.inf
        self.max = -math.inf

    def add(self, value: float) -> None:
        v = max(value, _FLOOR)
        k = math.floor(math.log10(v) * _FINE)
        self._bins[k] = self._bins.get(k, 0) + 1
        self.count += 1
        if v < self.min:
            self.min = v
        if v > self.max:
            self.max = v

    def percentile(self, q: float) -> float | None:
        """The nearest-rank percentile (as `data.percentile` on the sorted values), ±0.5 %."""
        if not self.count:
            return None
        rank = min(self.count, max(1, math.ceil(q / 100 * self.count)))
        seen = 0
        for k in sorted(self._bins):
            seen += self._bins[k]
            if seen >= rank:
                middle = 10 ** ((k + 0.5) / _FINE)
                return min(self.max, max(self.min, middle))
        return self.max  # not reached: the bins hold `count` values

    def histogram(self) -> dict[str, Any]:
        """Counts in log-spaced bins, ten a decade, from the smallest value's to the largest's."""
        if not self.count:
            return {"edges": [], "counts": []}
        coarse: dict[int, int] = {}
        for k, n in self._bins.items():
            c = k // _PER_COARSE
            coarse[c] = coarse.get(c, 0) + n
        lo, hi = min(coarse), max(coarse) + 1
        edges = [round(10 ** (k / _COARSE), 6) for k in range(lo, hi + 1)]
        return {"edges": edges, "counts": [coarse.get(k, 0) for k in range(lo, hi)]}
