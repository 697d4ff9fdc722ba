"""The workers of this host: spawn each in its slice, retire with a drain
deadline, reap the dead, and keep crash loops from becoming hot loops.

The scaler asks (`spawn`, `retire`); `reap` runs every tick and reports who
exited and why. A worker that exits without being asked to is a crash; a queue
whose workers keep crashing waits out an exponential backoff before the next
spawn and shows the state ``crashloop``.

Every worker leaf gets an eBPF device allowlist before the worker starts (its
own GPU's nodes plus the standard ones; CPU and simulated workers the standard
nodes only). Where that cannot be done the worker still runs, and
``ManagedWorker.isolation`` says why.

With a Redis connection (``conn``), ``reap`` also keeps house about once a
second: it adopts workers a previous scaler left running (`adopt`) and writes
this host's summary (`host_status`) to ``fleet:hosts``.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from fleet import codec, keys
from fleet.settings import FleetSettings
from fleet.workerspec import WorkerSpec, new_worker_id
from scheduler.adopt import UNKNOWN_RC, Candidate, WorkerProcess, decode_registry, find_adoptable
from scheduler.bpf_devices import (
    STANDARD_RULES,
    AttachResult,
    assemble,
    attach_device_allowlist,
    attached_programs,
    gpu_allow_rules,
    load_program,
    read_char_majors,
)
from scheduler.cgroups import Leaf, Limits, SliceManager
from scheduler.devices import AmdBackend, Device, NvidiaBackend, backend_for_device
from scheduler.spawn import force_kill, spawn_in_leaf

log = logging.getLogger("fleet.scheduler")

WORKER_ARGV = (sys.executable, "-m", "worker")
STABLE_AFTER_S = 30.0  # a worker alive this long resets its queue's crash count
CRASHLOOP_AFTER = 3  # consecutive crashes that make a crash loop
HOUSEKEEPING_S = 1.0  # adopt and publish the host status at most this often
_warned: set[str] = set()


def restart_delay_s(crashes: int, base_s: float = 0.5, cap_s: float = 60.0) -> float:
    """Exponential backoff before the next spawn after `crashes` consecutive crashes."""
    if crashes <= 0:
        return 0.0
    return float(min(cap_s, base_s * 2 ** (crashes - 1)))


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


@dataclass
class ManagedWorker:
    worker_id: str
    queue: str
    device: Device
    proc: WorkerProcess  # a Popen, or an AdoptedProcess for a worker we took over
    leaf: Leaf | None
    started_s: float
    retire_deadline_s: float | None = None
    isolation: AttachResult = field(default_factory=lambda: AttachResult(False, "not attempted"))
    adopted: bool = False
    ready: bool = False  # it loaded its model and served: a later death is no start-up crash

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass(frozen=True)
class Exited:
    worker_id: str
    queue: str
    device_id: str
    returncode: int  # UNKNOWN_RC for an adopted worker (not our child)
    crashed: bool
    lived_s: float


@dataclass
class CrashRecord:
    consecutive: int = 0
    total: int = 0
    next_spawn_s: float = 0.0
    last_error: str = ""
    delay_s: float = 0.0  # the backoff now being waited out

    @property
    def crashloop(self) -> bool:
        return self.consecutive >= CRASHLOOP_AFTER


def device_rules(device: Device) -> list[Any] | str:
    """The allowlist for a worker on ``device``, or why it cannot be computed."""
    try:
        majors = read_char_majors()
    except OSError as exc:
        majors = {}
        log.debug("cannot read /proc/devices: %s", exc)
    nvidia_minor = render_minor = None
    if device.vendor == "nvidia":
        nvidia_minor = NvidiaBackend().minor_number(device)
    elif device.vendor == "amd":
        render_minor = AmdBackend().render_minor(device)
    try:
        return gpu_allow_rules(device, nvidia_minor=nvidia_minor, render_minor=render_minor,
                               majors=majors)
    except ValueError as exc:
        return str(exc)


def isolate(leaf: Leaf | None, device: Device, reason_no_leaf: str) -> AttachResult:
    """Attach the device allowlist of ``device`` to ``leaf`` (before the worker starts)."""
    if leaf is None:
        return AttachResult(False, f"no cgroup leaf: {reason_no_leaf}")
    rules = device_rules(device)
    if isinstance(rules, str):
        return AttachResult(False, rules)
    return attach_device_allowlist(leaf.path, rules)


def probe_isolation(slices: SliceManager | None) -> AttachResult:
    """Can this host attach device programs at all? (loads one, attaches nothing)."""
    if slices is None or not slices.available:
        return AttachResult(False, "no cgroup leaves: " + (
            "cgroups disabled (scaler.use_cgroups)" if slices is None else slices.status.reason))
    try:
        os.close(load_program(assemble(STANDARD_RULES)))
    except OSError as exc:
        return AttachResult(False, f"BPF_PROG_LOAD: {exc.strerror}", exc.errno)
    return AttachResult(True, "eBPF device allowlist on every worker leaf")


@dataclass
class Supervisor:
    settings: FleetSettings
    slices: SliceManager | None
    log_dir: Path | None = None
    workers: dict[str, ManagedWorker] = field(default_factory=dict)
    crashes: dict[str, CrashRecord] = field(default_factory=dict)
    conn: redis.Redis | None = None  # registry and host status; None: no housekeeping
    devices: dict[str, Device] = field(default_factory=dict)  # known, for adopted workers
    restart_base_s: float = 0.5
    restart_cap_s: float = 60.0
    host: str = field(default_factory=socket.gethostname)
    _isolation_probe: AttachResult | None = field(default=None, repr=False)
    _housekept_s: float = field(default=float("-inf"), repr=False)
    _redis_ok: bool = field(default=True, repr=False)

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
        isolation = isolate(leaf, device, self._no_leaf_reason())
        if not isolation.ok and leaf is not None:  # no leaf: open_slice_manager said why
            _warn_once(f"device isolation off ({isolation.reason}): workers can open every device node")
        proc = self._start(env, leaf, spec)
        worker = ManagedWorker(worker_id, queue, device, proc, leaf, time.monotonic(),
                               isolation=isolation)
        self.workers[worker_id] = worker
        self.devices.setdefault(device.id, device)
        log.info("spawned worker %s (pid %d) for queue %s on %s%s; device isolation %s",
                 worker_id, proc.pid, queue, device.id, f" in {leaf.path}" if leaf else "",
                 "on" if isolation.ok else f"off: {isolation.reason}")
        return worker

    def _start(self, env: dict[str, str], leaf: Leaf | None, spec: WorkerSpec
               ) -> subprocess.Popen[bytes]:
        stderr = self._log_file(spec.worker_id)
        try:
            proc = spawn_in_leaf(WORKER_ARGV, env, leaf, stdin=subprocess.PIPE, stderr=stderr)
        except OSError:
            if leaf is not None:
                leaf.remove()
            raise
        finally:
            if stderr is not None:
                stderr.close()
        assert proc.stdin is not None
        proc.stdin.write(spec.to_json().encode())
        proc.stdin.close()
        return proc

    def _no_leaf_reason(self) -> str:
        if self.slices is None:
            return "cgroups disabled (scaler.use_cgroups)"
        return self.slices.status.reason if not self.slices.available else "leaf not created"

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

    # -- adopting --------------------------------------------------------------
    def adopt(self, devices: Iterable[Device] = ()) -> list[ManagedWorker]:
        """Take over the live workers of this host that a previous scaler left running.

        Needs ``conn``. Deletes this host's registry entries whose process is gone.
        Workers of a queue no longer configured are adopted and retired at once.
        """
        for device in devices:
            self.devices.setdefault(device.id, device)
        if self.conn is None:
            return []
        registry = decode_registry(self.conn.hgetall(keys.WORKERS))
        found, stale = find_adoptable(registry, self.host, self.slices, set(self.workers))
        if stale:
            self.conn.hdel(keys.WORKERS, *stale)
            log.info("removed %d registry entries of workers gone from %s", len(stale), self.host)
        return [self._adopt_one(candidate) for candidate in found]

    def _adopt_one(self, c: Candidate) -> ManagedWorker:
        device = self.devices.get(c.device_id) or Device(
            c.device_id, c.device_id.split("-", 1)[0], -1, None, "adopted", None)
        lived_s = max(0.0, time.time() - c.started_ms / 1000)
        isolation = AttachResult(False, "adopted without a cgroup leaf")
        if c.leaf is not None:
            programs = attached_programs(c.leaf.path)
            isolation = AttachResult(programs > 0, f"adopted: {programs} device program(s) on leaf")
        worker = ManagedWorker(c.worker_id, c.queue, device, c.process, c.leaf,
                               time.monotonic() - lived_s, isolation=isolation, adopted=True)
        self.workers[c.worker_id] = worker
        log.info("adopted worker %s (pid %d) of queue %s on %s (proof: %s)", c.worker_id,
                 c.process.pid, c.queue, c.device_id, c.proof)
        if c.queue not in self.settings.queues:
            log.warning("adopted worker %s serves queue %s, which is no longer configured: "
                        "retiring it", c.worker_id, c.queue)
            self.retire(c.worker_id)
        return worker

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
        log.info("retiring worker %s (drain deadline %.1f s)", worker_id, timeout)

    def reap(self) -> list[Exited]:
        """Collect exited workers; force retirees past their deadline; keep house."""
        now = time.monotonic()
        exited: list[Exited] = []
        for worker in list(self.workers.values()):
            code = worker.proc.poll()
            if code is None and worker.retire_deadline_s is not None and now > worker.retire_deadline_s:
                log.warning("worker %s missed its drain deadline: killing its %s", worker.worker_id,
                            "cgroup" if worker.leaf else "process group")
                force_kill(worker.proc, worker.leaf)
                code = worker.proc.wait(5)
            if code is None:
                continue
            exited.append(self._finish(worker, code, now))
        if now - self._housekept_s >= HOUSEKEEPING_S:
            self._housekept_s = now
            self.keep_house()
        return exited

    def _finish(self, worker: ManagedWorker, code: int, now: float) -> Exited:
        del self.workers[worker.worker_id]
        force_kill(worker.proc, worker.leaf)  # anything it left behind
        if worker.leaf is not None:
            if worker.leaf.wait_empty(5.0):
                worker.leaf.remove()
            else:
                log.error("cgroup %s still has processes %s after kill", worker.leaf.path,
                          worker.leaf.procs())
        crashed = worker.retire_deadline_s is None
        lived = now - worker.started_s
        if crashed:
            self._record_crash(worker, code, lived, now)
        return Exited(worker.worker_id, worker.queue, worker.device.id, code, crashed, lived)

    def _record_crash(self, worker: ManagedWorker, code: int, lived_s: float, now: float) -> None:
        record = self.crashes.setdefault(worker.queue, CrashRecord())
        # a worker that got ready (or lived long) and then died is not a crash loop at start-up
        stable = worker.ready or lived_s > STABLE_AFTER_S
        record.consecutive = 1 if stable else record.consecutive + 1
        record.total += 1
        record.delay_s = restart_delay_s(record.consecutive, self.restart_base_s, self.restart_cap_s)
        record.next_spawn_s = now + record.delay_s
        status = "exit status unknown (adopted)" if code == UNKNOWN_RC else f"exit {code}"
        record.last_error = f"{status} after {lived_s:.1f}s"
        level = logging.ERROR if record.crashloop else logging.WARNING
        log.log(level, "worker %s of queue %s crashed (%s); next spawn in %.1fs%s", worker.worker_id,
                worker.queue, record.last_error, record.delay_s,
                " — crash loop" if record.crashloop else "")

    def mark_ready(self, worker_id: str) -> None:
        """The worker registered as idle or busy: its model loaded."""
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker.ready = True

    def kill_hung(self, worker_id: str, why: str) -> None:
        """Stop a worker that is stuck in a batch: no drain, its slice is killed now."""
        worker = self.workers.get(worker_id)
        if worker is None or (worker.retire_deadline_s is not None and worker.retire_deadline_s <= 0):
            return
        log.error("worker %s is hung (%s): killing it; its jobs will be reclaimed", worker_id, why)
        worker.retire_deadline_s = 0.0  # forced at once by the next reap
        force_kill(worker.proc, worker.leaf)

    def note_healthy(self, queue: str) -> None:
        """A worker of the queue completed work: its crash streak is over."""
        record = self.crashes.get(queue)
        if record is not None and record.consecutive:
            record.consecutive = 0
            record.next_spawn_s = 0.0
            record.delay_s = 0.0

    def crashloop_queues(self) -> dict[str, CrashRecord]:
        """Queues whose workers keep crashing (CRASHLOOP_AFTER in a row), with their record."""
        return {q: r for q, r in self.crashes.items() if r.crashloop}

    # -- host status -------------------------------------------------------------
    def isolation_status(self) -> AttachResult:
        """On when the host can attach device programs and every worker has one."""
        if self._isolation_probe is None:
            self._isolation_probe = probe_isolation(self.slices)
        failed = [w.isolation for w in self.workers.values() if not w.isolation.ok]
        return failed[0] if self._isolation_probe.ok and failed else self._isolation_probe

    def host_status(self, now_s: float | None = None) -> dict[str, Any]:
        """This host's summary for ``fleet:hosts`` and `fleet status`."""
        now = time.monotonic() if now_s is None else now_s
        isolation = self.isolation_status()
        cgroups = self.slices.status.reason if self.slices else "disabled (scaler.use_cgroups)"
        return {
            "host": self.host,
            "scaler_pid": os.getpid(),
            "beat_ms": int(time.time() * 1000),
            "cgroups": {"available": bool(self.slices and self.slices.available), "reason": cgroups},
            "isolation": {"on": isolation.ok, "reason": isolation.reason},
            "workers": len(self.workers),
            "adopted": sum(1 for w in self.workers.values() if w.adopted),
            "crashloops": {
                q: {"consecutive": r.consecutive, "total": r.total, "last_error": r.last_error,
                    "retry_in_s": round(max(0.0, r.next_spawn_s - now), 3)}
                for q, r in self.crashloop_queues().items()
            },
        }

    def publish_host_status(self) -> None:
        """Write `host_status()` to ``fleet:hosts`` under this host's name."""
        if self.conn is not None:
            self.conn.hset(keys.HOSTS, self.host, codec.pack(self.host_status()))

    def withdraw_host_status(self) -> None:
        if self.conn is not None:
            self.conn.hdel(keys.HOSTS, self.host)

    def keep_house(self) -> None:
        """Adopt late registrants and publish the host status; Redis trouble is logged once."""
        if self.conn is None:
            return
        try:
            self.adopt()
            self.publish_host_status()
        except redis.RedisError as exc:
            if self._redis_ok:
                log.warning("host status not published: %s (workers are unaffected)",
                            type(exc).__name__)
            self._redis_ok = False
            return
        self._redis_ok = True

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


def host_statuses(conn: redis.Redis) -> dict[str, dict[str, Any]]:
    """Every host's last published status (for `fleet status`); check ``beat_ms`` for age.

    Same shape as the worker registry (name -> msgpack map), so one decoder serves both."""
    return decode_registry(conn.hgetall(keys.HOSTS))
