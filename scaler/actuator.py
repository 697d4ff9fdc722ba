"""Carry a decision out, and tell everyone what was decided.

`Actuator` is the only code that starts or stops workers: it drains the workers a
decision retires (only the ones this host manages; other hosts retire their own)
and spawns one worker per placed device, while the supervisor's crash-loop backoff
allows it. `Publisher` writes the last decision per queue to ``fleet:decisions``
and this host's device readings to ``fleet:devices`` for `fleet status`, and
removes registry entries of workers that are gone.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import redis

from fleet import codec, keys
from scaler.model import DeviceView, QueueDecision, QueueSnapshot
from scheduler.devices import Device
from scheduler.supervisor import Supervisor

log = logging.getLogger("fleet.scaler")

CRASHLOOP_HOLD = "CrashLoopBackoff"


@dataclass(frozen=True)
class Applied:
    """What the actuator did for one queue."""

    spawned: int = 0
    retired: int = 0
    held: str | None = None  # why a wanted spawn did not happen


class Actuator:
    def __init__(self, supervisor: Supervisor, devices: Mapping[str, Device]) -> None:
        self.supervisor = supervisor
        self.devices = devices  # device id -> Device, every device this host may use

    def apply(self, queue: str, decision: QueueDecision, now_mono_s: float) -> Applied:
        """Retire then spawn. `now_mono_s` is the supervisor's clock (time.monotonic)."""
        retired = 0
        for worker_id in decision.retire:
            worker = self.supervisor.workers.get(worker_id)
            if worker is not None and worker.retire_deadline_s is None:
                self.supervisor.retire(worker_id)
                retired += 1
        spawned, held = 0, None
        for device_id in decision.add_devices:
            if not self.supervisor.can_spawn(queue, now_mono_s):
                held = CRASHLOOP_HOLD
                break
            device = self.devices.get(device_id)
            if device is None:
                held = f"UnknownDevice {device_id}"
                continue
            try:
                self.supervisor.spawn(queue, device)
            except OSError as exc:
                log.error("queue %s: cannot start a worker on %s: %s", queue, device_id, exc)
                held = "SpawnFailed"
                break
            spawned += 1
        return Applied(spawned, retired, held)


def decision_record(
    snap: QueueSnapshot, decision: QueueDecision, applied: Applied, *, host: str, mode: str, at_ms: int
) -> dict[str, object]:
    """The `fleet:decisions` value for one queue (msgpack map)."""
    return {
        "desired": decision.desired, "current": decision.current, "raw_need": decision.raw_need,
        "clamped": decision.clamped, "reason": decision.reason, "at_ms": at_ms, "host": host,
        "mode": mode, "held": applied.held, "lag": snap.lag, "pending": snap.pending,
        "oldest_wait_s": snap.oldest_wait_s, "rate_per_s": round(snap.completion_rate_per_s, 3),
        "spawned": applied.spawned, "retired": applied.retired,
    }


def device_record(device: DeviceView, *, host: str, at_ms: int) -> dict[str, object]:
    return {
        "host": host, "device": device.id, "utilization": device.utilization,
        "memory_used_bytes": device.memory_used_bytes, "memory_total_bytes": device.memory_total_bytes,
        "workers": device.workers, "at_ms": at_ms,
    }


class Publisher:
    """Writes decisions and device readings; at most once per `interval_s` unless a
    decision changed something, so most ticks cost only the read."""

    def __init__(self, conn: redis.Redis, interval_s: float = 1.0, host: str | None = None) -> None:
        self.conn = conn
        self.interval_s = interval_s
        self.host = host or socket.gethostname()
        self._last_s = float("-inf")
        self._last_keys: dict[str, tuple[object, ...]] = {}
        self.round_trips = 0

    def publish(
        self,
        records: Mapping[str, dict[str, object]],
        devices: Iterable[DeviceView],
        forget_workers: Iterable[str],
        now_s: float,
    ) -> bool:
        """Write when something changed or the interval passed; True when it wrote."""
        gone = sorted(set(forget_workers))
        changed = {q: _essence(r) for q, r in records.items()}
        due = now_s - self._last_s >= self.interval_s
        if not (due or gone or changed != self._last_keys):
            return False
        at_ms = int(now_s * 1000)
        pipe = self.conn.pipeline(transaction=False)
        if records:
            pipe.hset(keys.DECISIONS, mapping={q: codec.pack(r) for q, r in records.items()})
        device_map = {f"{self.host}/{d.id}": codec.pack(device_record(d, host=self.host, at_ms=at_ms))
                      for d in devices}
        if device_map:
            pipe.hset(keys.DEVICES, mapping=device_map)  # type: ignore[arg-type]
        if gone:
            pipe.hdel(keys.WORKERS, *gone)
        pipe.execute()
        self.round_trips += 1
        self._last_s, self._last_keys = now_s, changed
        return True


def _essence(record: Mapping[str, object]) -> tuple[object, ...]:
    return tuple(record.get(k) for k in ("desired", "current", "reason", "held", "mode"))
