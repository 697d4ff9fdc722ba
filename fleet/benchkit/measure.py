"""Rates and latency percentiles: the small arithmetic every measurement shares."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    items: int
    wall_s: float

    @property
    def per_s(self) -> float:
        return self.items / self.wall_s if self.wall_s > 0 else 0.0


@dataclass(frozen=True)
class Latency:
    jobs: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    late_sends: int  # sends that left more than 1 ms after their scheduled time


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_of(latencies_s: Sequence[float], late_sends: int) -> Latency:
    ordered = sorted(latencies_s)
    return Latency(
        jobs=len(ordered),
        p50_ms=percentile(ordered, 0.50) * 1000,
        p99_ms=percentile(ordered, 0.99) * 1000,
        max_ms=(ordered[-1] if ordered else 0.0) * 1000,
        late_sends=late_sends,
    )
