"""What the host's /metrics shows, gathered once per scaler tick.

Workers never serve metrics themselves. Each publishes cumulative counters with
its heartbeat (`worker.stats`, format `fleet.telemetry`); every tick the scaler
reads this host's registry entries and the exits since the last tick in one
pipelined round trip (`StatsReader`), and `StatsAggregator` sums them by
(queue, device):

- counters and histograms = the live workers' counts + a per-(queue, device)
  "retired" total into which a worker's last counts move when it leaves (its final
  publish on a clean exit, else its last heartbeat), so no counter goes backwards
  when a worker disappears and the series stay bounded by queues x devices, never
  by worker IDs;
- gauges (in-flight jobs, workers by state) come from live workers only.

`ScalerMetrics.observe` also builds the queue, decision and device rows from the
tick's snapshot and decision (the policy's inputs, raw need, clamped and desired
counts), counts decisions by reason and logs each change of a queue's decision.
`scaler.exposition` renders the latest `Frame` on a scrape.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from fleet import codec, keys, telemetry
from fleet.telemetry import Totals
from scaler.model import READY_STATES, Decision, DeviceView, QueueDecision, QueuePolicy, QueueSnapshot
from scheduler.devices import Device

log = logging.getLogger("fleet.scaler")

Key = tuple[str, str]  # (queue, device)
STATES = ("starting", "loading", "idle", "busy", "draining")
EXITS_PER_READ = 10_000


@dataclass(frozen=True)
class WorkerCounts:
    """One worker's published counts (a registry entry or an exit record)."""

    id: str
    queue: str
    device: str
    state: str
    beat_ms: int
    totals: Totals
    in_flight: int = 0

    @property
    def key(self) -> Key:
        return (self.queue, self.device)


def parse_counts(worker_id: str, data: bytes, host: str | None = None) -> WorkerCounts | None:
    """A registry entry -> WorkerCounts; None when malformed, stats-less or of another host."""
    try:
        raw = codec.unpack(data)
    except codec.DecodeError:
        return None
    if not isinstance(raw, dict) or (host is not None and raw.get("host") != host):
        return None
    stats = telemetry.decode(raw.get("stats"))
    queue, state = raw.get("queue"), raw.get("state")
    if stats is None or not isinstance(queue, str) or state not in STATES:
        return None
    try:
        beat_ms = int(raw.get("beat_ms") or 0)
    except (TypeError, ValueError):
        return None
    return WorkerCounts(worker_id, queue, str(raw.get("device") or ""), state, beat_ms, *stats)


class StatsAggregator:
    """Sums workers' cumulative counts by (queue, device), monotonically across churn. Pure."""

    def __init__(self) -> None:
        self.retired: dict[Key, Totals] = {}
        self.seen: dict[str, WorkerCounts] = {}  # live workers' last counts
        self.finished: set[str] = set()  # exited workers whose entry may still linger

    def _retire(self, w: WorkerCounts) -> None:
        self.retired.setdefault(w.key, Totals()).add(w.totals)

    def observe(self, registry: Mapping[str, WorkerCounts], exits: Iterable[WorkerCounts] = ()) -> None:
        """One tick: final counts of exited workers, then the registry as it is now."""
        for w in exits:
            if w.id in self.finished:
                continue
            self.seen.pop(w.id, None)
            self.finished.add(w.id)
            self._retire(w)
        for worker_id in list(self.seen):
            if worker_id not in registry:  # gone without a final publish (crash, kill)
                self._retire(self.seen.pop(worker_id))
        for worker_id, w in registry.items():
            if worker_id in self.finished:
                continue
            prev = self.seen.get(worker_id)
            if prev is not None and w.totals.jobs_done() < prev.totals.jobs_done():
                self._retire(prev)  # a counter reset under the same ID: keep what was counted
            self.seen[worker_id] = w
        self.finished &= set(registry)

    def totals(self) -> dict[Key, Totals]:
        out = {k: t.copy() for k, t in self.retired.items()}
        for w in self.seen.values():
            out.setdefault(w.key, Totals()).add(w.totals)
        return out

    def live(self, now_ms: int, stale_ms: int) -> list[WorkerCounts]:
        """Workers whose heartbeat is fresh: the only source of gauges."""
        return [w for w in self.seen.values() if now_ms - w.beat_ms <= stale_ms]


@dataclass(frozen=True)
class RawStats:
    registry: dict[str, WorkerCounts]
    exits: list[WorkerCounts]
    dead_letters: dict[str, int]


class StatsReader:
    """This host's registry entries, the exits since the last read and the DLQ lengths,
    in one pipelined round trip. Exits from before `since_ms` (epoch ms; default: when
    the reader was made) belong to an earlier scaler's counters and are skipped."""

    def __init__(self, conn: redis.Redis, host: str, since_ms: int | None = None) -> None:
        self.conn, self.host = conn, host
        start = int(time.time() * 1000) if since_ms is None else since_ms
        self.last_exit_id = f"{max(0, start - 1)}-{2**64 - 1}"  # exclusive: IDs from `start` on
        self.round_trips = 0

    def read(self, queues: Iterable[str]) -> RawStats:
        names = list(queues)
        pipe = self.conn.pipeline(transaction=False)
        pipe.hgetall(keys.WORKERS)
        pipe.xrange(keys.EXITS, min=f"({self.last_exit_id}", count=EXITS_PER_READ)
        for q in names:
            pipe.xlen(keys.dlq(q))
        registry_raw, exits_raw, *dlq = pipe.execute()
        self.round_trips += 1
        if exits_raw:
            self.last_exit_id = codec_text(exits_raw[-1][0])
        registry = {}
        for k, v in registry_raw.items():
            counts = parse_counts(codec_text(k), v, self.host)
            if counts is not None:
                registry[counts.id] = counts
        exits = self._exits(exits_raw)
        return RawStats(registry, exits, dict(zip(names, (int(n) for n in dlq), strict=True)))

    def _exits(self, entries: list[Any]) -> list[WorkerCounts]:
        out = []
        for _entry_id, fields in entries:
            worker_id = fields.get(keys.X_WORKER_ID.encode())
            entry = fields.get(keys.X_ENTRY.encode())
            if worker_id is None or entry is None:
                continue
            counts = parse_counts(codec_text(worker_id), entry, self.host)
            if counts is not None:
                out.append(counts)
        return out


def codec_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# ----------------------------------------------------------------------------- frame


@dataclass(frozen=True)
class QueueRow:
    """One queue's signals, the policy's inputs and its decision."""

    snapshot: QueueSnapshot
    decision: QueueDecision | None
    policy: QueuePolicy
    dead_letters: int = 0
    crashes_total: int = 0
    crashloop: bool = False

    @property
    def ready(self) -> int:
        return sum(1 for w in self.snapshot.workers if w.state in READY_STATES)

    @property
    def bounds(self) -> tuple[int, int]:
        o = self.snapshot.override
        return (self.policy.min_workers if o.min is None else o.min,
                self.policy.max_workers if o.max is None else o.max)


@dataclass(frozen=True)
class DeviceRow:
    device: Device
    reading: DeviceView | None


@dataclass(frozen=True)
class Frame:
    """Everything one scrape renders; built once per tick, replaced whole."""

    at_s: float
    ticks: int
    queues: Mapping[str, QueueRow] = field(default_factory=dict)
    totals: Mapping[Key, Totals] = field(default_factory=dict)
    in_flight: Mapping[Key, int] = field(default_factory=dict)
    workers: Mapping[tuple[str, str, str], int] = field(default_factory=dict)  # (queue, device, state)
    devices: tuple[DeviceRow, ...] = ()
    decisions: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (queue, reason) -> count


def worker_gauges(
    live: Iterable[WorkerCounts], starting: Iterable[Key]
) -> tuple[dict[Key, int], dict[tuple[str, str, str], int]]:
    """In-flight jobs per (queue, device) and workers per (queue, device, state), live only;
    `starting`: workers this host spawned that have not registered yet."""
    in_flight: dict[Key, int] = {}
    states: Counter[tuple[str, str, str]] = Counter()
    for w in live:
        in_flight[w.key] = in_flight.get(w.key, 0) + w.in_flight
        states[(w.queue, w.device, w.state)] += 1
    for queue, device in starting:
        states[(queue, device, "starting")] += 1
    for queue, device, _ in list(states):
        for state in STATES:
            states.setdefault((queue, device, state), 0)
    return in_flight, dict(states)


class DecisionLog:
    """Counts decisions by reason and logs every change of a queue's (desired, reason)."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.last: dict[str, tuple[int, str]] = {}

    def observe(self, queues: Mapping[str, QueueDecision], snaps: Mapping[str, QueueSnapshot]) -> None:
        for name, qd in queues.items():
            self.counts[(name, str(qd.reason))] += 1
            if self.last.get(name) == (qd.desired, str(qd.reason)):
                continue
            self.last[name] = (qd.desired, str(qd.reason))
            snap = snaps.get(name)
            lag = snap.lag if snap else 0
            wait = snap.oldest_wait_s if snap and snap.oldest_wait_s is not None else 0.0
            log.info("queue %s: decision %s: desired %d (current %d, raw need %d, clamped %d; lag %d, "
                     "oldest wait %.1fs)", name, qd.reason, qd.desired, qd.current, qd.raw_need, qd.clamped,
                     lag, wait, extra={"fields": {
                         "event": "scaler.decision", "queue": name, "reason": str(qd.reason),
                         "desired": qd.desired, "current": qd.current, "raw_need": qd.raw_need,
                         "clamped": qd.clamped, "lag": lag, "oldest_wait_s": wait}})


class ScalerMetrics:
    """Per-tick gathering for one host; `frame` is what a scrape renders."""

    def __init__(self, conn: redis.Redis, host: str, stale_s: float) -> None:
        self.reader = StatsReader(conn, host)
        self.aggregator = StatsAggregator()
        self.stale_ms = int(stale_s * 1000)
        self.lock = threading.Lock()
        self.frame: Frame | None = None
        self.failures = 0

    def observe(self, loop: Any) -> None:
        """Called by `ScalerLoop.tick` after it decided; never lets the tick fail."""
        try:
            frame = self.build(loop)
        except Exception as exc:  # metrics must never stop the scaler
            self.failures += 1
            if self.failures in (1, 10, 100) or self.failures % 1000 == 0:
                log.warning("metrics not updated (%d times): %s", self.failures, exc)
            return
        with self.lock:
            self.frame = frame

    def build(self, loop: Any) -> Frame:
        snapshot, decision = loop.last
        raw = self.reader.read(snapshot.queues)
        self.aggregator.observe(raw.registry, raw.exits)
        registered = set(raw.registry)
        starting = [(w.queue, w.device.id) for w in loop.supervisor.workers.values()
                    if w.worker_id not in registered]
        in_flight, workers = worker_gauges(
            self.aggregator.live(int(time.time() * 1000), self.stale_ms), starting)
        readings = {d.id: d for d in (getattr(loop, "readings", None) or snapshot.devices)}
        return Frame(
            at_s=time.time(), ticks=loop.ticks,
            queues=queue_rows(snapshot.queues, decision, loop.policies(), raw.dead_letters,
                              loop.supervisor.crashes),
            totals=self.aggregator.totals(), in_flight=in_flight, workers=workers,
            devices=tuple(DeviceRow(d, readings.get(d.id)) for d in loop.all_devices),
            decisions=dict(loop.decision_log.counts),
        )

    def latest(self) -> Frame | None:
        with self.lock:
            return self.frame


def queue_rows(
    snaps: Mapping[str, QueueSnapshot],
    decision: Decision,
    policies: Mapping[str, QueuePolicy],
    dead_letters: Mapping[str, int],
    crashes: Mapping[str, Any],
) -> dict[str, QueueRow]:
    rows = {}
    for name, snap in snaps.items():
        crash = crashes.get(name)
        rows[name] = QueueRow(
            snap, decision.queues.get(name), policies.get(name) or QueuePolicy(),
            dead_letters.get(name, 0),
            crashes_total=crash.total if crash is not None else 0,
            crashloop=bool(crash is not None and crash.crashloop),
        )
    return rows
