"""Placement of a new worker on a device: a pure function, no I/O.

``place`` excludes devices that are over a watermark, at their worker limit or
without free memory for the model, then picks the one with the most headroom:
fewest workers, then most free memory, then lowest utilisation, then id (so equal
devices are chosen in a stable order). It always says why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceLoad:
    device_id: str
    uuid: str | None
    workers_on_device: int
    utilization: float | None  # 0..1, None = unknown
    memory_used_bytes: int | None
    memory_total_bytes: int | None

    @property
    def memory_free_bytes(self) -> int | None:
        if self.memory_total_bytes is None:
            return None
        return max(self.memory_total_bytes - (self.memory_used_bytes or 0), 0)


@dataclass(frozen=True)
class PlacementNeed:
    model_memory_bytes: int = 0
    max_workers_per_device: int = 1
    util_watermark: float = 0.9  # 0..1: a device busier than this takes no new worker
    mem_watermark: float = 0.9  # 0..1: a device fuller than this takes no new worker


@dataclass(frozen=True)
class Placement:
    device_id: str | None
    reason: str


# Exclusion reasons, in the order they are checked; used in "no device: all ..." lines.
AT_LIMIT = "at worker limit"
OVER_MEM = "over memory watermark"
OVER_UTIL = "over utilisation watermark"
NO_ROOM = "without free memory for the model"


def exclusion(load: DeviceLoad, need: PlacementNeed) -> str | None:
    """Why ``load`` cannot take one more worker, or None if it can."""
    if load.workers_on_device >= need.max_workers_per_device:
        return AT_LIMIT
    total, used = load.memory_total_bytes, load.memory_used_bytes
    if total and used is not None and used / total > need.mem_watermark:
        return OVER_MEM
    if load.utilization is not None and load.utilization > need.util_watermark:
        return OVER_UTIL
    free = load.memory_free_bytes
    if free is not None and free < need.model_memory_bytes:
        return NO_ROOM
    return None


def _headroom_key(load: DeviceLoad) -> tuple[int, int, float, str]:
    free = load.memory_free_bytes
    util = load.utilization
    # unknown free memory sorts after every known amount; unknown utilisation after all known
    return (
        load.workers_on_device,
        -(free if free is not None else -1),
        util if util is not None else 2.0,
        load.device_id,
    )


def _describe(load: DeviceLoad) -> str:
    n = load.workers_on_device
    parts = [f"{load.device_id}: {n} worker{'' if n == 1 else 's'}"]
    if load.memory_total_bytes:
        free = load.memory_free_bytes or 0
        parts.append(f"{round(100 * free / load.memory_total_bytes)}% mem free")
    if load.utilization is not None:
        parts.append(f"{round(100 * load.utilization)}% util")
    return ", ".join(parts)


def _no_device(excluded: dict[str, str]) -> str:
    reasons = sorted(set(excluded.values()))
    if len(reasons) == 1:
        return f"no device: all {reasons[0]}"
    detail = "; ".join(f"{d} {r}" for d, r in sorted(excluded.items()))
    return f"no device: {detail}"


def place(devices: Sequence[DeviceLoad], need: PlacementNeed) -> Placement:
    """Choose the device for one new worker, or None, with a human reason."""
    if not devices:
        return Placement(None, "no device: none discovered")
    excluded = {d.device_id: r for d in devices if (r := exclusion(d, need)) is not None}
    candidates = [d for d in devices if d.device_id not in excluded]
    if not candidates:
        return Placement(None, _no_device(excluded))
    best = min(candidates, key=_headroom_key)
    return Placement(best.device_id, _describe(best))


def spread(devices: Sequence[DeviceLoad], need: PlacementNeed, n: int) -> list[str]:
    """Place ``n`` workers one at a time; stops early when no device can take more.

    Each placed worker adds to its device's count and, conservatively, its model's
    memory to the device's used memory.
    """
    loads = {d.device_id: d for d in devices}
    chosen: list[str] = []
    for _ in range(n):
        result = place(list(loads.values()), need)
        if result.device_id is None:
            break
        load = loads[result.device_id]
        used = load.memory_used_bytes
        if used is not None or load.memory_total_bytes is not None:
            used = (used or 0) + need.model_memory_bytes
        loads[load.device_id] = dataclasses.replace(
            load, workers_on_device=load.workers_on_device + 1, memory_used_bytes=used
        )
        chosen.append(load.device_id)
    return chosen
