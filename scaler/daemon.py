"""The scaler loop that `fleet scaler` and `fleet up` both run (one per host).

Each tick: reap exited workers, read every queue's signals in one round trip
(`scaler.signals`), build a `Snapshot`, run the pure policy (`scaler.policy`) and
act through the supervisor (`scaler.actuator`). With ``scaler.autoscale`` off each
queue is held at its configured ``workers`` count instead; a pinned
``fleet scale --replicas`` wins in both modes.

Clocks: the snapshot uses epoch seconds (`time.time()`), the clock of the workers'
heartbeats; the supervisor keeps its own monotonic clock, converted here once. The
age of the oldest job is measured on Redis's clock inside the probe.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import redis

from fleet.connection import connect
from fleet.settings import FleetSettings, QueueSettings
from scaler.actuator import Actuator, Applied, Publisher, decision_record
from scaler.metrics import DecisionLog, ScalerMetrics
from scaler.model import (
    Decision,
    DeviceView,
    PolicyState,
    QueueDecision,
    QueuePolicy,
    QueueState,
    Reason,
    ScaleOverride,
    Snapshot,
    WorkerView,
)
from scaler.policy import DEFAULT_POLICY, decide_queue
from scaler.signals import (
    RateTracker,
    Reading,
    SignalReader,
    WorkerRecord,
    acked_total,
    queue_snapshot,
    worker_view,
)
from scheduler.devices import Device, DeviceBackend, Telemetry, backend_for_device
from scheduler.supervisor import Exited, Supervisor

log = logging.getLogger("fleet.scaler")

FIXED_COUNT = "FixedCount"
FORGET_AFTER_S = 60.0  # registry entries silent this long are removed


def queue_policy(q: QueueSettings, load_time_s: float = 0.0) -> QueuePolicy:
    """The policy of one queue from its settings (raises ConfigError when impossible)."""
    return QueuePolicy(
        backlog_per_worker=q.backlog_per_worker, max_wait_s=q.max_wait_s,
        min_workers=q.min_workers, max_workers=q.max_workers, stabilization_s=q.stabilization_s,
        scale_up_cooldown_s=q.scale_up_cooldown_s, max_workers_per_device=q.max_workers_per_device,
        load_time_s=load_time_s,
    )


def stale_after_s(settings: FleetSettings) -> float:
    """A registry entry whose heartbeat is older than this is not counted."""
    return max(5.0, 10 * settings.worker.heartbeat_interval_s)


@dataclass(frozen=True)
class LocalWorker:
    """A worker this host's supervisor manages, on the snapshot's clock."""

    worker_id: str
    queue: str
    device_id: str
    started_s: float
    retiring: bool


def hung_for_s(record: WorkerRecord, now_s: float) -> float:
    """How long a worker has been inside one batch (0 when it is not busy)."""
    if record.state != "busy" or record.busy_since_ms is None:
        return 0.0
    return max(0.0, now_s - record.busy_since_ms / 1000)


def local_workers(supervisor: Supervisor, now_s: float, now_mono_s: float) -> list[LocalWorker]:
    offset = now_s - now_mono_s
    return [
        LocalWorker(w.worker_id, w.queue, w.device.id, w.started_s + offset, w.retire_deadline_s is not None)
        for w in supervisor.workers.values()
    ]


def fresh_records(
    records: Mapping[str, WorkerRecord], now_s: float, stale_s: float, gone: frozenset[str] = frozenset()
) -> dict[str, WorkerRecord]:
    """Registry entries that still beat and whose worker has not been reaped."""
    cutoff_ms = (now_s - stale_s) * 1000
    return {i: r for i, r in records.items() if r.beat_ms >= cutoff_ms and i not in gone}


def worker_views(
    queue: str, local: Sequence[LocalWorker], records: Mapping[str, WorkerRecord]
) -> tuple[WorkerView, ...]:
    """This host's workers (registered or still starting; retiring ones as draining) plus
    the live registry entries of workers this host does not manage (other hosts)."""
    views: list[WorkerView] = []
    managed = set()
    for w in local:
        managed.add(w.worker_id)
        if w.queue != queue:
            continue
        record = records.get(w.worker_id)
        view = worker_view(record) if record else WorkerView(w.worker_id, queue, w.device_id, "starting",
                                                             w.started_s)
        views.append(replace(view, state="draining") if w.retiring else view)
    views.extend(worker_view(r) for i, r in records.items() if r.queue == queue and i not in managed)
    return tuple(sorted(views, key=lambda v: v.id))


def device_views(
    devices: Sequence[Device],
    telemetry: Callable[[Device], Telemetry],
    local: Sequence[LocalWorker],
    records: Mapping[str, WorkerRecord],
    host: str,
) -> tuple[DeviceView, ...]:
    """This host's devices with their readings and worker counts (all queues)."""
    counts: dict[str, int] = {}
    managed = {w.worker_id for w in local}
    for w in local:
        counts[w.device_id] = counts.get(w.device_id, 0) + 1
    for r in records.values():
        if r.host == host and r.id not in managed:  # e.g. a `fleet worker` started by hand
            counts[r.device] = counts.get(r.device, 0) + 1
    out = []
    for d in devices:
        t = telemetry(d)
        out.append(DeviceView(d.id, t.utilization, t.memory_used_bytes,
                              t.memory_total_bytes or d.memory_total_bytes, counts.get(d.id, 0)))
    return tuple(out)


def placement_views(views: Sequence[DeviceView], devices: Sequence[Device]) -> tuple[DeviceView, ...]:
    """What the policy places on: a CPU's load average is host-wide and a minute late,
    so it is shown by `fleet status` but never blocks a placement (the per-device
    worker limit does)."""
    cpus = {d.id for d in devices if d.vendor == "cpu"}
    return tuple(replace(v, utilization=None) if v.id in cpus else v for v in views)


def decide_on_devices(
    snapshot: Snapshot,
    state: PolicyState,
    policies: Mapping[str, QueuePolicy],
    allowed: Mapping[str, frozenset[str]],
) -> Decision:
    """`scaler.policy.decide`, with each queue placed only on the devices it may use
    (its `device` selector); queues still share headroom in name order."""
    devices = {d.id: d for d in snapshot.devices}
    decisions: dict[str, QueueDecision] = {}
    states: dict[str, QueueState] = {}
    for name in sorted(snapshot.queues):
        mine = tuple(d for d in devices.values() if d.id in allowed.get(name, frozenset()))
        decisions[name], states[name], placed = decide_queue(
            snapshot.queues[name], state.queues.get(name, QueueState()),
            policies.get(name, DEFAULT_POLICY), snapshot.now_s, mine,
        )
        devices.update({d.id: d for d in placed})
    return Decision(queues=decisions, new_state=PolicyState(queues=states))


def fixed_overrides(
    settings: FleetSettings, overrides: Mapping[str, ScaleOverride]
) -> dict[str, ScaleOverride]:
    """Autoscale off: every queue pinned at `workers` unless `fleet scale --replicas` says otherwise."""
    out = {}
    for name, q in settings.queues.items():
        o = overrides.get(name, ScaleOverride())
        out[name] = o if o.replicas is not None else replace(o, replicas=q.workers)
    return out


class ScalerLoop:
    def __init__(
        self,
        settings: FleetSettings,
        supervisor: Supervisor,
        devices: Mapping[str, Sequence[Device]],
        conn: redis.Redis | None = None,
        telemetry: Callable[[Device], Telemetry] | None = None,
    ) -> None:
        self.settings = settings
        self.supervisor = supervisor
        self.devices = devices  # queue -> devices it may use
        self.stop = threading.Event()
        self.conn = conn if conn is not None else connect(settings.redis)
        self.reader = SignalReader(self.conn)
        self.host = socket.gethostname()
        self.publisher = Publisher(self.conn, host=self.host)
        every = {d.id: d for ds in devices.values() for d in ds}
        self.actuator = Actuator(supervisor, every)
        self.all_devices = tuple(every.values())
        self.allowed = {q: frozenset(d.id for d in ds) for q, ds in devices.items()}
        self.telemetry = telemetry or self._telemetry
        self._backends: dict[str, DeviceBackend] = {}
        self.rates = RateTracker(tau_s=max(3.0, 3 * settings.scaler.tick_s))
        self.state = PolicyState()
        self.load_times: dict[str, float] = {}
        self.exited: deque[Exited] = deque(maxlen=1000)
        self.last: tuple[Snapshot, Decision] | None = None
        self.ticks = 0
        self.user_pinned: set[str] = set()
        self.decision_log = DecisionLog()  # logs each change of a queue's decision, counts reasons
        self.metrics: ScalerMetrics | None = None  # set by scaler.exposition.serve_metrics
        self.readings: tuple[DeviceView, ...] = ()  # device telemetry as measured, for status
        for q in settings.queues.values():  # an impossible policy fails at start, not mid-run
            queue_policy(q)

    def _telemetry(self, device: Device) -> Telemetry:
        backend = self._backends.get(device.id)
        if backend is None:
            backend = self._backends[device.id] = backend_for_device(device)
        return backend.telemetry(device)

    # -- one tick ----------------------------------------------------------------
    def tick(self) -> Decision:
        now_s, now_mono = time.time(), time.monotonic()
        exited = self.supervisor.reap()
        self.exited.extend(exited)
        gone = frozenset(e.worker_id for e in exited)
        reading = self.reader.read(list(self.settings.queues))
        self.watch_workers(reading.workers, now_s)
        snapshot, decision = self.plan(reading, now_s, now_mono, gone, self.state)
        self.state = decision.new_state
        records = {name: self.act(name, snapshot, qd) for name, qd in decision.queues.items()}
        forget = gone | self._forgotten(reading, now_s)
        self.publisher.publish(records, self.readings, forget, now_s)
        self.last = (snapshot, decision)
        self.ticks += 1
        self.decision_log.observe(decision.queues, snapshot.queues)
        if self.metrics is not None:
            self.metrics.observe(self)
        return decision

    def watch_workers(self, records: Mapping[str, WorkerRecord], now_s: float) -> None:
        """Mark this host's workers that got ready; kill those stuck in a batch past the
        queue's job timeout (their entries are reclaimed and the delivery counts)."""
        for worker_id, worker in list(self.supervisor.workers.items()):
            record = records.get(worker_id)
            if record is None:
                continue
            if record.state in ("idle", "busy"):
                self.supervisor.mark_ready(worker_id)
            q = self.settings.queues.get(worker.queue)
            if q is not None and hung_for_s(record, now_s) > q.job_timeout_s:
                self.supervisor.kill_hung(worker_id, f"busy for over {q.job_timeout_s:g}s")

    def plan(
        self, reading: Reading, now_s: float, now_mono_s: float, gone: frozenset[str], state: PolicyState
    ) -> tuple[Snapshot, Decision]:
        """Snapshot and decision for one reading (`fleet scale --dry-run` calls this too)."""
        snapshot = self.snapshot(reading, now_s, now_mono_s, gone)
        return snapshot, decide_on_devices(snapshot, state, self.policies(), self.allowed)

    def snapshot(self, reading: Reading, now_s: float, now_mono_s: float, gone: frozenset[str]) -> Snapshot:
        records = fresh_records(reading.workers, now_s, stale_after_s(self.settings), gone)
        local = local_workers(self.supervisor, now_s, now_mono_s)
        overrides = dict(reading.overrides)
        self.user_pinned = {q for q, o in overrides.items() if o.replicas is not None}
        if not self.settings.scaler.autoscale:
            overrides = fixed_overrides(self.settings, overrides)
        queues = {}
        for name, raw in reading.queues.items():
            mine = [r for r in records.values() if r.queue == name]
            self._learn_load_time(name, mine)
            acked = acked_total(raw)
            if acked is None:  # no entries-read: the workers' own counters
                acked = sum(r.done + r.failed for r in mine)
            rate = self.rates.observe(name, acked, now_s)
            queues[name] = queue_snapshot(raw, worker_views(name, local, records),
                                          overrides.get(name, ScaleOverride()), rate)
        self.readings = device_views(self.all_devices, self.telemetry, local, records, self.host)
        return Snapshot(now_s=now_s, queues=queues, devices=placement_views(self.readings, self.all_devices))

    def _learn_load_time(self, queue: str, records: Sequence[WorkerRecord]) -> None:
        loads = [r.load_s for r in records if r.load_s is not None]
        if loads:
            self.load_times[queue] = max(loads)

    def policies(self) -> dict[str, QueuePolicy]:
        load = self.load_times
        return {name: queue_policy(q, load.get(name, 0.0)) for name, q in self.settings.queues.items()}

    def act(self, queue: str, snapshot: Snapshot, qd: QueueDecision) -> dict[str, object]:
        snap = snapshot.queues[queue]
        mode = "auto" if self.settings.scaler.autoscale else "fixed"
        if queue in self.user_pinned:
            mode = "pinned"
        elif mode == "fixed" and qd.reason == Reason.PINNED:
            qd = replace(qd, reason=FIXED_COUNT)
        applied = self.actuator.apply(queue, qd, time.monotonic()) if (qd.add or qd.retire) else Applied()
        if applied.spawned or applied.retired or applied.held:
            self._log(queue, snap.lag, snap.pending, snap.oldest_wait_s, qd, applied)
        return decision_record(snap, qd, applied, host=self.host, mode=mode, at_ms=int(snapshot.now_s * 1000))

    def _log(self, queue: str, lag: int, pending: int, wait_s: float | None, qd: QueueDecision,
             applied: Applied) -> None:
        wait = "-" if wait_s is None else f"{wait_s:.1f}s"
        level = logging.WARNING if applied.held else logging.INFO
        held = f", held: {applied.held}" if applied.held else ""
        log.log(level, "queue %s: %d -> %d workers (%s; need %d; lag %d, pending %d, oldest wait %s)"
                " started %d, retiring %d%s", queue, qd.current, qd.desired, qd.reason, qd.raw_need, lag,
                pending, wait, applied.spawned, applied.retired, held)

    def _forgotten(self, reading: Reading, now_s: float) -> set[str]:
        cutoff_ms = (now_s - FORGET_AFTER_S) * 1000
        return {i for i, r in reading.workers.items() if r.beat_ms < cutoff_ms}

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except redis.RedisError as exc:
                log.warning("scaler tick: Redis unavailable (%s); carrying on", type(exc).__name__)
            except Exception:
                log.exception("scaler tick failed; carrying on")
            self.stop.wait(max(0.0, self.settings.scaler.tick_s - (time.monotonic() - started)))
