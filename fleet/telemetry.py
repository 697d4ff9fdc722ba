"""The worker stats wire format, shared by the worker (which records) and the scaler
(which adds the workers up for /metrics).

A worker keeps cumulative counters and histogram buckets in plain Python
(`worker.stats`) and publishes them as the ``stats`` field of its registry entry
(``fleet:workers``) every heartbeat, and once more on a clean exit through
``fleet:exits`` (see `fleet.keys`). No Prometheus multiprocess directory: the
scaler's collector owns every series and sums workers by (queue, device).

Encoded form (msgpack map)::

    {"v": 1, "jobs": {"ok": n, "failed": n, "retry": n, "dead": n},
     "h": {"<histogram>": [count per bucket..., count above the last bound, sum]},
     "in_flight": n}

Pure: no Redis, no clock.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEMA = 1
OK, FAILED, RETRY, DEAD = "ok", "failed", "retry", "dead"
OUTCOMES = (OK, FAILED, RETRY, DEAD)

_WAIT_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# histogram name -> upper bounds (le); every worker and every scaler use these
BUCKETS: dict[str, tuple[float, ...]] = {
    "batch_size": (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
    "batch_fill": (0.1, 0.25, 0.5, 0.75, 0.9, 1.0),
    "queue_wait_s": _WAIT_S,
    "inference_s": (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0),
    "latency_s": _WAIT_S,
}


def _zeros(name: str) -> list[float]:
    return [0] * (len(BUCKETS[name]) + 1)


@dataclass
class Totals:
    """Cumulative counts of one worker, or of many added together."""

    jobs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    buckets: dict[str, list[float]] = field(default_factory=lambda: {n: _zeros(n) for n in BUCKETS})
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(BUCKETS, 0.0))

    def observe(self, name: str, value: float) -> None:
        self.buckets[name][bisect_left(BUCKETS[name], value)] += 1
        self.sums[name] += value

    def observe_many(self, name: str, values: Iterable[float]) -> None:
        bounds, counts, total = BUCKETS[name], self.buckets[name], 0.0
        for value in values:
            counts[bisect_left(bounds, value)] += 1
            total += value
        self.sums[name] += total

    def add(self, other: Totals) -> None:
        for outcome, n in other.jobs.items():
            self.jobs[outcome] = self.jobs.get(outcome, 0) + n
        for name, counts in other.buckets.items():
            mine = self.buckets[name]
            for i, count in enumerate(counts):
                mine[i] += count
            self.sums[name] += other.sums[name]

    def copy(self) -> Totals:
        return Totals(dict(self.jobs), {n: list(c) for n, c in self.buckets.items()}, dict(self.sums))

    def count(self, name: str) -> int:
        return int(sum(self.buckets[name]))

    def jobs_done(self) -> int:
        """Deliveries this worker finished (every outcome)."""
        return sum(self.jobs.values())


def encode(totals: Totals, in_flight: int = 0) -> dict[str, Any]:
    return {
        "v": SCHEMA,
        "jobs": dict(totals.jobs),
        "h": {n: [*totals.buckets[n], totals.sums[n]] for n in BUCKETS},
        "in_flight": in_flight,
    }


def decode(raw: Any) -> tuple[Totals, int] | None:
    """(totals, in_flight) from an encoded map; None when it is not one this scaler reads."""
    if not isinstance(raw, Mapping) or raw.get("v") != SCHEMA:
        return None
    jobs, hists = raw.get("jobs"), raw.get("h")
    if not isinstance(jobs, Mapping) or not isinstance(hists, Mapping):
        return None
    totals = Totals()
    try:
        for outcome in OUTCOMES:
            totals.jobs[outcome] = max(0, int(jobs.get(outcome) or 0))
        for name, bounds in BUCKETS.items():
            values = hists.get(name)
            if not isinstance(values, list | tuple) or len(values) != len(bounds) + 2:
                return None
            totals.buckets[name] = [max(0, int(v)) for v in values[:-1]]
            totals.sums[name] = float(values[-1])
        in_flight = max(0, int(raw.get("in_flight") or 0))
    except (TypeError, ValueError):
        return None
    return totals, in_flight
