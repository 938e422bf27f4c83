"""The live stat objects, apart from the store so that they are compiled with the request
path that counts into them (a package ``__init__`` cannot be)."""

from __future__ import annotations

import bisect

BUCKETS: tuple[float, ...] = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000,
                              30000, 60000, 300000, 600000, 1800000, 3600000)
"""Envoy's default histogram bucket bounds (milliseconds). (Typed as a tuple of any length:
mypyc would otherwise keep it as a fixed-size C tuple and box it anew on every record.)"""


class Counter:
    """A value that only goes up; Envoy's counters."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class Gauge:
    """A value that goes up and down; Envoy's gauges."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class Histogram:
    """Counts of recorded values per Envoy bucket, with their sum."""

    __slots__ = ("counts", "sum", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def record(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[int]:
        out, total = [], 0
        for c in self.counts[:-1]:
            total += c
            out.append(total)
        return out

    def quantile(self, q: float) -> float | None:
        """An upper-bound estimate of a quantile from the buckets (None when empty)."""
        if not self.count:
            return None
        rank = q * self.count
        total = 0
        for i, c in enumerate(self.counts):
            total += c
            if total >= rank and c:
                return float(BUCKETS[i]) if i < len(BUCKETS) else float(BUCKETS[-1])
        return float(BUCKETS[-1])
