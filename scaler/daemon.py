"""The scaler loop that `fleet scaler` and `fleet up` both run.

Each tick: reap exited workers, decide how many workers each queue should have,
and act through the supervisor (spawn on the placed device, retire by drain).
This first version keeps each queue at its configured `workers` count; the
autoscaling policy plugs in at `desired_counts`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence

from fleet.settings import FleetSettings
from scheduler.devices import Device
from scheduler.placement import DeviceLoad, PlacementNeed, place
from scheduler.supervisor import Supervisor

log = logging.getLogger("fleet.scaler")


class ScalerLoop:
    def __init__(
        self,
        settings: FleetSettings,
        supervisor: Supervisor,
        devices: Mapping[str, Sequence[Device]],
    ) -> None:
        self.settings = settings
        self.supervisor = supervisor
        self.devices = devices  # queue -> devices it may use
        self.stop = threading.Event()

    def desired_counts(self, now_s: float) -> dict[str, int]:
        return {name: q.workers for name, q in self.settings.queues.items()}

    def tick(self) -> None:
        now = time.monotonic()
        self.supervisor.reap()
        for queue, desired in self.desired_counts(now).items():
            self.reconcile(queue, desired, now)

    def reconcile(self, queue: str, desired: int, now_s: float) -> None:
        current = self.supervisor.count(queue)
        if current < desired and self.supervisor.can_spawn(queue, now_s):
            device = self.choose_device(queue)
            if device is not None:
                self.supervisor.spawn(queue, device)
        elif current > desired:
            live = [
                w
                for w in self.supervisor.workers.values()
                if w.queue == queue and w.retire_deadline_s is None
            ]
            newest = max(live, key=lambda w: w.started_s)
            self.supervisor.retire(newest.worker_id)

    def choose_device(self, queue: str) -> Device | None:
        q = self.settings.queue(queue)
        devices = {d.id: d for d in self.devices.get(queue, ())}
        counts: dict[str, int] = {d: 0 for d in devices}
        for worker in self.supervisor.workers.values():
            if worker.device.id in counts:
                counts[worker.device.id] += 1
        loads = [
            DeviceLoad(d.id, d.uuid, counts[d.id], None, None, d.memory_total_bytes) for d in devices.values()
        ]
        placement = place(loads, PlacementNeed(max_workers_per_device=q.max_workers_per_device))
        if placement.device_id is None:
            log.warning("queue %s: no device for a new worker: %s", queue, placement.reason)
            return None
        return devices[placement.device_id]

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except Exception:
                log.exception("scaler tick failed; carrying on")
            self.stop.wait(max(0.0, self.settings.scaler.tick_s - (time.monotonic() - started)))
