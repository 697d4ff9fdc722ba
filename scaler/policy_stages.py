"""The named stages of the scaling policy, each a small pure function.

`scaler.policy.decide` chains them: capacity → raw need (backlog, wait time,
throughput) → bounds → tolerance band → step limit and cooldown → device
headroom → stabilisation window → retire choice. docs/scaling.md explains each.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from scaler.model import (
    COMING_STATES,
    READY_STATES,
    DeviceView,
    QueuePolicy,
    ScaleOverride,
    WorkerView,
)

_EPSILON = 1e-9  # keeps 3.0000000001 workers from rounding up to 4


def ceil_count(value: float) -> int:
    """The smallest whole count covering `value`, tolerant of float noise."""
    return max(0, math.ceil(value - _EPSILON))


@dataclass(frozen=True)
class Capacity:
    """The workers of one queue by what they can do for it."""

    ready: int = 0  # idle + busy
    coming: int = 0  # starting + loading: capacity that is on its way
    busy: int = 0

    @property
    def current(self) -> int:
        """Every worker that is or will be serving; draining ones never count."""
        return self.ready + self.coming


def count_capacity(workers: Iterable[WorkerView]) -> Capacity:
    """Stage 3: count ready and coming workers; draining ones are already leaving."""
    states = [worker.state for worker in workers]
    return Capacity(
        ready=sum(state in READY_STATES for state in states),
        coming=sum(state in COMING_STATES for state in states),
        busy=sum(state == "busy" for state in states),
    )


def backlog_need(lag: int, pending: int, backlog_per_worker: int) -> int:
    """Stage 1: one worker per `backlog_per_worker` jobs; any work at all needs one."""
    work = max(lag, 0) + max(pending, 0)
    if work == 0:
        return 0
    return max(1, -(-work // backlog_per_worker))


def wait_need(
    oldest_wait_s: float | None,
    max_wait_s: float,
    lag: int,
    completion_rate_per_s: float,
    capacity: Capacity,
    holding_for_load: bool,
) -> int:
    """Stage 2: a job waiting past `max_wait_s` asks for more workers, whatever the backlog:
    one more, or as many as would drain the undelivered `lag` within `max_wait_s` at the
    current per-worker completion rate (the oldest wait itself when nothing completes).

    While workers are still loading (`holding_for_load`) the wait cannot drop yet, so it
    asks for no more than what is already coming.
    """
    if oldest_wait_s is None or oldest_wait_s <= max_wait_s:
        return 0
    if holding_for_load:
        return capacity.current
    completing = completion_rate_per_s > 0
    drain_s = max(lag, 0) / completion_rate_per_s if completing else oldest_wait_s
    return max(capacity.current + 1, ceil_count(capacity.ready * drain_s / max_wait_s))


def learn_worker_rate(
    previous_rate_per_s: float | None, completion_rate_per_s: float, lag: int, capacity: Capacity
) -> float | None:
    """Learn jobs/s per worker from a saturated tick: work waits and every ready worker is busy."""
    saturated = lag > 0 and capacity.ready > 0 and capacity.busy == capacity.ready
    if saturated and completion_rate_per_s > 0:
        return completion_rate_per_s / capacity.ready
    return previous_rate_per_s


def throughput_need(completion_rate_per_s: float, worker_rate_per_s: float | None, capacity: Capacity) -> int:
    """Workers needed to keep up with the jobs now completing; never more than current.

    This only holds capacity (a drained backlog must not scale away the workers that
    keep it drained); scaling up is the backlog's and the wait time's job. Without a
    known per-worker rate the busy workers are what is needed.
    """
    if worker_rate_per_s is None:
        keep = capacity.busy
    else:
        keep = ceil_count(completion_rate_per_s / worker_rate_per_s)
    return min(keep, capacity.current)


@dataclass(frozen=True)
class Bounds:
    """The effective min/max of one queue."""

    lo: int
    hi: int


def effective_bounds(policy: QueuePolicy, override: ScaleOverride) -> Bounds:
    """Stage 6: `fleet scale --min/--max` replace the policy bounds; min wins a conflict."""
    lo = policy.min_workers if override.min is None else max(0, override.min)
    hi = policy.max_workers if override.max is None else max(0, override.max)
    return Bounds(lo=lo, hi=max(lo, hi))


def clamp(need: int, bounds: Bounds) -> int:
    """`need` inside the bounds."""
    return min(max(need, bounds.lo), bounds.hi)


def within_tolerance(target: int, current: int, tolerance: float) -> bool:
    """Stage 4: a target within `tolerance` x current of current changes nothing."""
    if current == 0:
        return target == 0
    return abs(target - current) <= tolerance * current


def scale_up_limit(current: int, policy: QueuePolicy) -> int:
    """Stage 5: the most workers one decision may reach (HPA-style: the larger of a step
    in workers and a factor of current)."""
    by_step = current + policy.scale_up_max_step
    by_factor = ceil_count(current * policy.scale_up_max_factor)
    return max(by_step, by_factor)


def in_cooldown(last_scale_up_s: float | None, now_s: float, cooldown_s: float) -> bool:
    """Stage 5: the previous scale-up was less than `cooldown_s` ago."""
    return last_scale_up_s is not None and now_s - last_scale_up_s < cooldown_s


@dataclass(frozen=True)
class Window:
    """The scale-down stabilisation window: open since `since_s`, highest desired `peak`."""

    since_s: float | None = None
    peak: int | None = None


def stabilize_down(
    desired: int, window: Window, now_s: float, stabilization_s: float
) -> tuple[int | None, Window]:
    """Stage 8: called while desired < current. Returns the count to scale down to once the
    window has lasted `stabilization_s` (the highest desired seen inside it), else None,
    with the window to carry on."""
    since_s = now_s if window.since_s is None else window.since_s
    peak = desired if window.peak is None else max(window.peak, desired)
    if now_s - since_s >= stabilization_s:
        return peak, Window()
    return None, Window(since_s=since_s, peak=peak)


def _retire_key(worker: WorkerView) -> tuple[int, float, float, str]:
    busy_rank = 1 if worker.state == "busy" else 0
    last_busy_s = -math.inf if worker.last_busy_s is None else worker.last_busy_s
    return (busy_rank, last_busy_s, -worker.started_s, worker.id)


def choose_retirees(workers: Iterable[WorkerView], count: int) -> tuple[str, ...]:
    """Stage 9: the `count` least recently busy workers: never-busy and idle ones before
    busy ones, oldest `last_busy_s` first, youngest first among equals; never a draining one."""
    if count <= 0:
        return ()
    candidates = sorted((w for w in workers if w.state != "draining"), key=_retire_key)
    return tuple(worker.id for worker in candidates[:count])


def device_has_room(device: DeviceView, policy: QueuePolicy) -> bool:
    """Stage 7: the device is under both watermarks, has memory for one more model and is
    under the workers-per-device limit. Unknown readings do not block."""
    if device.utilization is not None and device.utilization >= policy.util_watermark:
        return False
    limit = policy.max_workers_per_device
    if limit is not None and device.workers >= limit:
        return False
    used, total = device.memory_used_bytes, device.memory_total_bytes
    if used is None or total is None:
        return True
    budget = total * policy.mem_watermark
    return used < budget and used + policy.model_memory_bytes <= budget


def _headroom_key(device: DeviceView) -> tuple[int, int, float, str]:
    free = -1
    if device.memory_used_bytes is not None and device.memory_total_bytes is not None:
        free = device.memory_total_bytes - device.memory_used_bytes
    utilization = 0.0 if device.utilization is None else device.utilization
    return (device.workers, -free, utilization, device.id)


def place_workers(
    devices: tuple[DeviceView, ...], count: int, policy: QueuePolicy
) -> tuple[tuple[str, ...], tuple[DeviceView, ...]]:
    """Stage 7: pick a device for each of `count` new workers by the most-headroom rule
    (fewest workers, most free memory, lowest utilisation, id). Returns the picks (fewer
    than `count` when devices run out of room) and the devices with the picks counted."""
    chosen: list[str] = []
    ledger = list(devices)
    for _ in range(count):
        roomy = [(i, d) for i, d in enumerate(ledger) if device_has_room(d, policy)]
        if not roomy:
            break
        index, device = min(roomy, key=lambda pair: _headroom_key(pair[1]))
        chosen.append(device.id)
        used = device.memory_used_bytes
        ledger[index] = replace(
            device,
            workers=device.workers + 1,
            memory_used_bytes=None if used is None else used + policy.model_memory_bytes,
        )
    return tuple(chosen), tuple(ledger)
