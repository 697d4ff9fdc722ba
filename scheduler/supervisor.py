"""The workers of this host: spawn each in its slice, retire with a drain
deadline, reap the dead, and keep crash loops from becoming hot loops.

The scaler asks (`spawn`, `retire`); `reap` runs every tick and reports who
exited and why. A worker that exits without being asked to is a crash; a queue
whose workers keep crashing waits out an exponential backoff before the next
spawn and shows the state ``crashloop``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fleet.settings import FleetSettings
from fleet.workerspec import WorkerSpec, new_worker_id
from scheduler.cgroups import Leaf, Limits, SliceManager
from scheduler.devices import Device, backend_for_device
from scheduler.spawn import _force, spawn_in_leaf

log = logging.getLogger("fleet.scheduler")

WORKER_ARGV = (sys.executable, "-m", "worker")
STABLE_AFTER_S = 30.0  # a worker alive this long resets its queue's crash count
CRASHLOOP_AFTER = 3  # consecutive crashes that make a crash loop


def restart_delay_s(crashes: int, base_s: float = 0.5, cap_s: float = 60.0) -> float:
    """Exponential backoff before the next spawn after `crashes` consecutive crashes."""
    if crashes <= 0:
        return 0.0
    return float(min(cap_s, base_s * 2 ** (crashes - 1)))


@dataclass
class ManagedWorker:
    worker_id: str
    queue: str
    device: Device
    proc: subprocess.Popen[bytes]
    leaf: Leaf | None
    started_s: float
    retire_deadline_s: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass(frozen=True)
class Exited:
    worker_id: str
    queue: str
    device_id: str
    returncode: int
    crashed: bool
    lived_s: float


@dataclass
class CrashRecord:
    consecutive: int = 0
    total: int = 0
    next_spawn_s: float = 0.0
    last_error: str = ""

    @property
    def crashloop(self) -> bool:
        return self.consecutive >= CRASHLOOP_AFTER


@dataclass
class Supervisor:
    settings: FleetSettings
    slices: SliceManager | None
    log_dir: Path | None = None
    workers: dict[str, ManagedWorker] = field(default_factory=dict)
    crashes: dict[str, CrashRecord] = field(default_factory=dict)

    # -- spawning ------------------------------------------------------------
    def can_spawn(self, queue: str, now_s: float) -> bool:
        record = self.crashes.get(queue)
        return record is None or now_s >= record.next_spawn_s

    def spawn(self, queue: str, device: Device) -> ManagedWorker:
        q = self.settings.queue(queue)
        worker_id = new_worker_id(queue, device.id)
        spec = WorkerSpec(self.settings, queue, device.id, device.vendor, device.cpus, worker_id)
        env = dict(os.environ)
        env.update(backend_for_device(device).pin_env(device))
        leaf = self._leaf(device, worker_id, Limits(
            cpus=device.cpus or None, memory_max_bytes=q.memory_max_bytes, cpu_max_cores=q.cpu_max_cores
        ))
        stderr = self._log_file(worker_id)
        proc = spawn_in_leaf(WORKER_ARGV, env, leaf, stdin=subprocess.PIPE, stderr=stderr)
        if stderr is not None:
            stderr.close()
        assert proc.stdin is not None
        proc.stdin.write(spec.to_json().encode())
        proc.stdin.close()
        worker = ManagedWorker(worker_id, queue, device, proc, leaf, time.monotonic())
        self.workers[worker_id] = worker
        log.info("spawned worker %s (pid %d) for queue %s on %s%s", worker_id, proc.pid, queue,
                 device.id, f" in {leaf.path}" if leaf else "")
        return worker

    def _leaf(self, device: Device, worker_id: str, limits: Limits) -> Leaf | None:
        if self.slices is None or not self.slices.available:
            return None
        try:
            return self.slices.create_leaf(device.id, worker_id, limits)
        except OSError as exc:
            log.warning("cannot create cgroup leaf for %s (%s): running it as a process group",
                        worker_id, exc)
            return None

    def _log_file(self, worker_id: str):  # type: ignore[no-untyped-def]
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return open(self.log_dir / f"{worker_id}.log", "ab")  # handed to the child

    # -- retiring --------------------------------------------------------------
    def retire(self, worker_id: str, drain_timeout_s: float | None = None) -> None:
        """Ask a worker to drain (SIGTERM); `reap` forces it after the deadline."""
        worker = self.workers.get(worker_id)
        if worker is None or worker.retire_deadline_s is not None:
            return
        timeout = drain_timeout_s or self.settings.worker.drain_timeout_s
        worker.retire_deadline_s = time.monotonic() + timeout
        if worker.proc.poll() is None:
            worker.proc.terminate()
        log.info("retiring worker %s (drain deadline %.0f s)", worker_id, timeout)

    def reap(self) -> list[Exited]:
        """Collect exited workers; force retirees past their deadline."""
        now = time.monotonic()
        exited: list[Exited] = []
        for worker in list(self.workers.values()):
            code = worker.proc.poll()
            if code is None and worker.retire_deadline_s is not None and now > worker.retire_deadline_s:
                log.warning("worker %s missed its drain deadline: killing its slice", worker.worker_id)
                _force(worker.proc, worker.leaf)
                code = worker.proc.wait(5)
            if code is None:
                continue
            exited.append(self._finish(worker, code, now))
        return exited

    def _finish(self, worker: ManagedWorker, code: int, now: float) -> Exited:
        del self.workers[worker.worker_id]
        _force(worker.proc, worker.leaf)  # anything it left behind
        if worker.leaf is not None and worker.leaf.wait_empty(5.0):
            worker.leaf.remove()
        crashed = worker.retire_deadline_s is None
        lived = now - worker.started_s
        if crashed:
            self._record_crash(worker, code, lived, now)
        return Exited(worker.worker_id, worker.queue, worker.device.id, code, crashed, lived)

    def _record_crash(self, worker: ManagedWorker, code: int, lived_s: float, now: float) -> None:
        record = self.crashes.setdefault(worker.queue, CrashRecord())
        record.consecutive = 1 if lived_s > STABLE_AFTER_S else record.consecutive + 1
        record.total += 1
        record.next_spawn_s = now + restart_delay_s(record.consecutive)
        record.last_error = f"exit {code} after {lived_s:.1f}s"
        level = logging.ERROR if record.crashloop else logging.WARNING
        log.log(level, "worker %s of queue %s crashed (%s); next spawn in %.1fs%s", worker.worker_id,
                worker.queue, record.last_error, restart_delay_s(record.consecutive),
                " — crash loop" if record.crashloop else "")

    def note_healthy(self, queue: str) -> None:
        """A worker of the queue completed work: its crash streak is over."""
        record = self.crashes.get(queue)
        if record is not None and record.consecutive:
            record.consecutive = 0
            record.next_spawn_s = 0.0

    # -- shutting down ---------------------------------------------------------
    def stop_all(self, drain_timeout_s: float | None = None) -> None:
        for worker_id in list(self.workers):
            self.retire(worker_id, drain_timeout_s)
        while self.workers:
            self.reap()
            if self.workers:
                time.sleep(0.05)

    def count(self, queue: str) -> int:
        return sum(1 for w in self.workers.values() if w.queue == queue and w.retire_deadline_s is None)
