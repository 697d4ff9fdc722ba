"""The frozen data the scaling policy reads and returns.

The scaler's reader builds a `Snapshot` from Redis and the device probe; the pure
policy (`scaler.policy.decide`) turns it, the previous `PolicyState` and the
per-queue `QueuePolicy` into a `Decision`; the actuator carries the decision out.
Nothing here does I/O. Every time is in seconds on one clock chosen by the reader
(`now_s`, `started_s`, `last_busy_s` must all come from it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from fleet.errors import ConfigError

WorkerState = Literal["starting", "loading", "idle", "busy", "draining"]
COMING_STATES: frozenset[str] = frozenset({"starting", "loading"})
READY_STATES: frozenset[str] = frozenset({"idle", "busy"})


class Reason(StrEnum):
    """Why a queue got its desired count (Kubernetes HPA style condition reasons)."""

    SCALE_UP_BACKLOG = "ScaleUpBacklog"
    SCALE_UP_WAIT_TIME = "ScaleUpWaitTime"
    WAITING_FOR_LOAD = "WaitingForLoad"
    SCALE_UP_LIMIT = "ScaleUpLimit"
    COOLDOWN = "Cooldown"
    DESIRED_WITHIN_RANGE = "DesiredWithinRange"
    STABILIZING_DOWN = "StabilizingDown"
    SCALE_DOWN = "ScaleDown"
    SCALE_TO_ZERO = "ScaleToZero"
    AT_MAX = "AtMax"
    AT_MIN = "AtMin"
    PINNED = "Pinned"
    DEVICES_SATURATED = "DevicesSaturated"


@dataclass(frozen=True)
class WorkerView:
    """One registered worker of a queue as the reader saw it."""

    id: str
    queue: str
    device_id: str
    state: WorkerState
    started_s: float
    last_busy_s: float | None = None  # when it last ran a batch; None = never


@dataclass(frozen=True)
class DeviceView:
    """One device (GPU or CPU set); `None` means the probe could not tell."""

    id: str
    utilization: float | None = None  # 0..1
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    workers: int = 0  # workers of every queue placed on it, draining ones included


@dataclass(frozen=True)
class ScaleOverride:
    """What `fleet scale` wrote for a queue: a pinned count and/or new bounds."""

    replicas: int | None = None
    min: int | None = None
    max: int | None = None


@dataclass(frozen=True)
class QueueSnapshot:
    """The signals of one queue at one instant."""

    queue: str
    length: int = 0  # XLEN
    lag: int = 0  # entries never delivered to the group
    pending: int = 0  # delivered, not yet acknowledged
    oldest_wait_s: float | None = None  # age of the oldest undelivered job
    oldest_pending_idle_s: float | None = None
    completion_rate_per_s: float = 0.0  # acks per second, recently
    workers: tuple[WorkerView, ...] = ()
    override: ScaleOverride = field(default_factory=ScaleOverride)


@dataclass(frozen=True)
class Snapshot:
    """Every queue and device at `now_s`."""

    now_s: float
    queues: Mapping[str, QueueSnapshot]
    devices: tuple[DeviceView, ...] = ()


@dataclass(frozen=True)
class QueuePolicy:
    """How one queue scales. Defaults are documented in docs/scaling.md."""

    backlog_per_worker: int = 5000
    max_wait_s: float = 30.0
    min_workers: int = 1
    max_workers: int = 64
    scale_up_max_step: int = 8  # workers added per decision, at least ...
    scale_up_max_factor: float = 2.0  # ... or current x factor, whichever is more
    scale_up_cooldown_s: float = 5.0
    stabilization_s: float = 60.0
    tolerance: float = 0.1  # relative band around current that changes nothing
    util_watermark: float = 0.9
    mem_watermark: float = 0.9
    model_memory_bytes: int = 0
    max_workers_per_device: int | None = None
    load_time_s: float = 0.0
    worker_rate_per_s: float | None = None  # jobs/s one worker sustains; None = learn it

    def __post_init__(self) -> None:
        for name, ok in self._checks():
            if not ok:
                raise ConfigError(f"invalid queue policy: {name} = {getattr(self, name)!r}")

    def _checks(self) -> tuple[tuple[str, bool], ...]:
        per_device = self.max_workers_per_device
        return (
            ("backlog_per_worker", self.backlog_per_worker > 0),
            ("max_wait_s", self.max_wait_s > 0),
            ("min_workers", 0 <= self.min_workers <= self.max_workers),
            ("scale_up_max_step", self.scale_up_max_step >= 1),
            ("scale_up_max_factor", self.scale_up_max_factor >= 1.0),
            ("scale_up_cooldown_s", self.scale_up_cooldown_s >= 0),
            ("stabilization_s", self.stabilization_s >= 0),
            ("tolerance", 0 <= self.tolerance < 1),
            ("util_watermark", 0 < self.util_watermark <= 1),
            ("mem_watermark", 0 < self.mem_watermark <= 1),
            ("model_memory_bytes", self.model_memory_bytes >= 0),
            ("max_workers_per_device", per_device is None or per_device >= 1),
            ("load_time_s", self.load_time_s >= 0),
            ("worker_rate_per_s", self.worker_rate_per_s is None or self.worker_rate_per_s > 0),
        )


@dataclass(frozen=True)
class QueueState:
    """The hysteresis of one queue, carried from one decision to the next."""

    last_scale_up_s: float | None = None
    over_provisioned_since_s: float | None = None  # start of the scale-down window
    window_max_desired: int | None = None  # highest desired seen inside that window
    last_desired: int | None = None
    last_reason: str | None = None
    worker_rate_per_s: float | None = None  # learnt on saturated ticks


@dataclass(frozen=True)
class PolicyState:
    """Every queue's `QueueState`; `PolicyState()` is the state before the first tick."""

    queues: Mapping[str, QueueState] = field(default_factory=dict)


@dataclass(frozen=True)
class QueueDecision:
    """What to do with one queue, and why."""

    current: int  # starting + loading + idle + busy workers (draining ones excluded)
    desired: int  # the count to reach after this decision
    raw_need: int  # what the backlog, wait time and throughput ask for
    clamped: int  # raw_need inside the min/max bounds (or the pinned count)
    reason: str  # a `Reason` value
    retire: tuple[str, ...] = ()  # worker ids to drain, least recently busy first
    add: int = 0  # workers to start
    add_devices: tuple[str, ...] = ()  # one device id per worker to start


@dataclass(frozen=True)
class Decision:
    """The decision for every queue of the snapshot plus the state for the next call."""

    queues: Mapping[str, QueueDecision]
    new_state: PolicyState
