"""Read the scaler's signals: every queue, the worker registry and the overrides in
one pipelined round trip, then turn the raw replies into model types.

The I/O is `SignalReader.read`; everything else here is a pure function of the raw
replies so tests drive it without Redis. One small Lua probe per queue (all of a
queue's keys share its hash tag, so it stays legal under Redis Cluster) reads the
stream length, the group's lag / pending / last-delivered-id / entries-read, the
oldest undelivered entry after last-delivered-id, the oldest pending entry's idle
time and Redis's own clock. The age of the oldest undelivered job comes from its
entry ID (the ms part) against that clock, so host clock skew does not matter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from fleet import codec, keys
from scaler.model import QueueSnapshot, ScaleOverride, WorkerView

LAG_COUNT_CAP = 10_000  # entries the probe counts when Redis cannot tell the lag
RATE_TAU_S = 3.0  # smoothing time constant of the completion rate

# KEYS[1] the jobs stream; ARGV[1] the group, ARGV[2] the lag count cap.
# Returns {xlen, group-info (flat) | false, oldest undelivered id | false,
#          oldest pending idle ms | false, counted lag | false, entries-added | false,
#          redis time s, redis time us}
PROBE_LUA = """
local s, group, cap = KEYS[1], ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local xlen = redis.call('XLEN', s)
local groups = redis.pcall('XINFO', 'GROUPS', s)
if type(groups) ~= 'table' or groups.err then return {xlen, false, false, false, false, false, t[1], t[2]} end
local g, info = false, {}
for _, grp in ipairs(groups) do
  local m = {}
  for i = 1, #grp, 2 do m[grp[i]] = grp[i + 1] end
  if m['name'] == group then g, info = grp, m end
end
if not g then return {xlen, false, false, false, false, false, t[1], t[2]} end
local last = info['last-delivered-id']
local nxt = redis.call('XRANGE', s, '(' .. last, '+', 'COUNT', 1)
local oldest = false
if #nxt > 0 then oldest = nxt[1][1] end
local idle = false
if tonumber(info['pending']) > 0 then
  local p = redis.call('XPENDING', s, group, '-', '+', 1)
  if #p > 0 then idle = p[1][3] end
end
local counted, added = false, false
if not info['lag'] and oldest then
  counted = 0
  local from = '(' .. last
  while counted < cap do
    local chunk = redis.call('XRANGE', s, from, '+', 'COUNT', math.min(1000, cap - counted))
    if #chunk == 0 then break end
    counted = counted + #chunk
    from = '(' .. chunk[#chunk][1]
  end
  local sinfo = redis.call('XINFO', 'STREAM', s)
  for i = 1, #sinfo, 2 do if sinfo[i] == 'entries-added' then added = sinfo[i + 1] end end
elseif not info['lag'] then
  counted = 0
end
return {xlen, g, oldest, idle, counted, added, t[1], t[2]}
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _int_or_none(value: Any) -> int | None:
    if value is None or value is False:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def stream_id_ms(entry_id: str | bytes) -> int | None:
    """The millisecond part of a stream entry ID ("1700000000000-3" -> 1700000000000)."""
    ms, _, _ = _text(entry_id).partition("-")
    return int(ms) if ms.isdigit() else None


@dataclass(frozen=True)
class RawQueue:
    """One queue's probe reply, decoded but not yet interpreted."""

    queue: str
    length: int = 0
    has_group: bool = False
    lag: int | None = None  # Redis's own lag; None when it cannot tell (deletions, trimming)
    pending: int = 0
    last_delivered_id: str = "0-0"
    entries_read: int | None = None
    oldest_undelivered_id: str | None = None
    oldest_pending_idle_ms: int | None = None
    counted_lag: int | None = None  # entries after last-delivered-id, counted up to the cap
    entries_added: int | None = None
    redis_now_ms: int = 0


def parse_probe(queue: str, reply: list[Any]) -> RawQueue:
    """The Lua probe's reply -> RawQueue (pure)."""
    xlen, group, oldest, idle, counted, added, t_s, t_us = reply
    now_ms = int(t_s) * 1000 + int(t_us) // 1000
    if not group:
        return RawQueue(queue, length=int(xlen), redis_now_ms=now_ms)
    info = {_text(group[i]): group[i + 1] for i in range(0, len(group) - 1, 2)}
    return RawQueue(
        queue=queue,
        length=int(xlen),
        has_group=True,
        lag=_int_or_none(info.get("lag")),
        pending=int(info.get("pending") or 0),
        last_delivered_id=_text(info.get("last-delivered-id") or "0-0"),
        entries_read=_int_or_none(info.get("entries-read")),
        oldest_undelivered_id=_text(oldest) if oldest else None,
        oldest_pending_idle_ms=_int_or_none(idle),
        counted_lag=_int_or_none(counted),
        entries_added=_int_or_none(added),
        redis_now_ms=now_ms,
    )


def lag_of(raw: RawQueue, cap: int = LAG_COUNT_CAP) -> int:
    """Entries never delivered to the group. Redis reports nil after deletions or
    trimming; then the probe's count is used (exact below the cap), and past the cap
    the upper bound entries-added - entries-read when both are known. Never 0 by default."""
    if not raw.has_group:
        return raw.length  # nothing was ever delivered
    if raw.lag is not None:
        return raw.lag
    counted = raw.counted_lag or 0
    if counted < cap:
        return counted
    if raw.entries_added is not None and raw.entries_read is not None:
        return max(counted, min(raw.length, raw.entries_added - raw.entries_read))
    return counted


def oldest_wait_s(raw: RawQueue) -> float | None:
    """Age of the oldest undelivered job from its entry ID against Redis's clock."""
    if raw.oldest_undelivered_id is None:
        return None  # nothing undelivered (or no group yet: the lag still counts)
    ms = stream_id_ms(raw.oldest_undelivered_id)
    return None if ms is None else max(0.0, (raw.redis_now_ms - ms) / 1000)


def acked_total(raw: RawQueue) -> int | None:
    """Entries the group has delivered and had acknowledged (entries-read - pending)."""
    if raw.entries_read is None:
        return None
    return max(0, raw.entries_read - raw.pending)


@dataclass(frozen=True)
class WorkerRecord:
    """One `fleet:workers` entry (see worker.heartbeat); times in epoch ms."""

    id: str
    queue: str
    device: str
    state: str
    host: str = ""
    pid: int | None = None
    started_ms: int = 0
    beat_ms: int = 0
    last_busy_ms: int | None = None
    load_s: float | None = None
    done: int = 0
    failed: int = 0
    busy_since_ms: int | None = None


_STATES = frozenset({"starting", "loading", "idle", "busy", "draining"})


def parse_worker(worker_id: str, data: bytes) -> WorkerRecord | None:
    """One registry entry; None when it is not what a worker writes."""
    try:
        raw = codec.unpack(data)
    except codec.DecodeError:
        return None
    if not isinstance(raw, dict) or raw.get("state") not in _STATES or not isinstance(raw.get("queue"), str):
        return None
    try:
        load_s = raw.get("load_s")
        return WorkerRecord(
            id=worker_id, queue=raw["queue"], device=str(raw.get("device") or ""), state=raw["state"],
            host=str(raw.get("host") or ""), pid=_int_or_none(raw.get("pid")),
            started_ms=int(raw.get("started_ms") or 0), beat_ms=int(raw.get("beat_ms") or 0),
            last_busy_ms=_int_or_none(raw.get("last_busy_ms")),
            load_s=float(load_s) if isinstance(load_s, int | float) else None,
            done=int(raw.get("done") or 0), failed=int(raw.get("failed") or 0),
            busy_since_ms=_int_or_none(raw.get("busy_since_ms")),
        )
    except (TypeError, ValueError):
        return None


def parse_workers(hash_reply: Mapping[Any, bytes]) -> dict[str, WorkerRecord]:
    out: dict[str, WorkerRecord] = {}
    for key, data in hash_reply.items():
        record = parse_worker(_text(key), data)
        if record is not None:
            out[record.id] = record
    return out


def _bound(value: Any) -> int | None:
    n = _int_or_none(value)
    return n if n is not None and n >= 0 else None


def parse_override(data: bytes) -> ScaleOverride:
    """A `fleet:scale` value (msgpack {replicas, min, max}); garbage means no override."""
    try:
        raw = codec.unpack(data)
    except codec.DecodeError:
        return ScaleOverride()
    if not isinstance(raw, dict):
        return ScaleOverride()
    return ScaleOverride(replicas=_bound(raw.get("replicas")), min=_bound(raw.get("min")),
                         max=_bound(raw.get("max")))


def encode_override(override: ScaleOverride) -> bytes:
    return codec.pack({"replicas": override.replicas, "min": override.min, "max": override.max})


def parse_overrides(hash_reply: Mapping[Any, bytes]) -> dict[str, ScaleOverride]:
    return {_text(k): parse_override(v) for k, v in hash_reply.items()}


def parse_decisions(hash_reply: Mapping[Any, bytes]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, data in hash_reply.items():
        try:
            raw = codec.unpack(data)
        except codec.DecodeError:
            continue
        if isinstance(raw, dict):
            out[_text(key)] = raw
    return out


def worker_view(record: WorkerRecord) -> WorkerView:
    """A registry entry as the policy sees it (epoch seconds, the snapshot's clock)."""
    last_busy = record.last_busy_ms / 1000 if record.last_busy_ms is not None else None
    return WorkerView(record.id, record.queue, record.device, record.state,  # type: ignore[arg-type]
                      record.started_ms / 1000, last_busy)


def queue_snapshot(
    raw: RawQueue, workers: tuple[WorkerView, ...], override: ScaleOverride, rate_per_s: float
) -> QueueSnapshot:
    """The policy's view of one queue from its probe reply (pure)."""
    idle_ms = raw.oldest_pending_idle_ms
    return QueueSnapshot(
        queue=raw.queue,
        length=raw.length,
        lag=lag_of(raw),
        pending=raw.pending,
        oldest_wait_s=oldest_wait_s(raw),
        oldest_pending_idle_s=idle_ms / 1000 if idle_ms is not None else None,
        completion_rate_per_s=rate_per_s,
        workers=workers,
        override=override,
    )


@dataclass
class RateTracker:
    """Acks per second per queue, from the change of a monotonically growing counter,
    smoothed with an exponential moving average of time constant `tau_s`."""

    tau_s: float = RATE_TAU_S
    _last: dict[str, tuple[float, int]] = field(default_factory=dict)
    _rate: dict[str, float] = field(default_factory=dict)

    def observe(self, queue: str, total: int | None, now_s: float) -> float:
        prev = self._last.get(queue)
        rate = self._rate.get(queue, 0.0)
        if total is None:
            return rate
        self._last[queue] = (now_s, total)
        if prev is None or total < prev[1] or now_s <= prev[0]:
            return rate  # first sample, or the counter was reset (group re-created)
        dt = now_s - prev[0]
        alpha = 1.0 - math.exp(-dt / self.tau_s)
        rate += alpha * ((total - prev[1]) / dt - rate)
        self._rate[queue] = rate
        return rate

    def rate(self, queue: str) -> float:
        return self._rate.get(queue, 0.0)

    def known(self, queue: str) -> bool:
        """True once two samples gave a rate."""
        return queue in self._rate


@dataclass(frozen=True)
class Reading:
    """Everything one round trip returned."""

    queues: Mapping[str, RawQueue]
    workers: Mapping[str, WorkerRecord]
    overrides: Mapping[str, ScaleOverride]
    decisions: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    devices: Mapping[str, dict[str, Any]] = field(default_factory=dict)


class SignalReader:
    """Reads a `Reading` for the given queues in ONE pipelined round trip."""

    def __init__(self, conn: redis.Redis, *, with_status: bool = False) -> None:
        self.conn = conn
        self.with_status = with_status  # also read fleet:decisions and fleet:devices
        self.sha: str | None = None
        self.round_trips = 0

    def read(self, queues: list[str]) -> Reading:
        if self.sha is None:
            self._load()
        replies = self._execute(queues)
        if any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
            self._load()  # Redis restarted or SCRIPT FLUSH
            replies = self._execute(queues)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        probes = replies[: len(queues)]
        rest = replies[len(queues):]
        return Reading(
            queues={q: parse_probe(q, r) for q, r in zip(queues, probes, strict=True)},
            workers=parse_workers(rest[0]),
            overrides=parse_overrides(rest[1]),
            decisions=parse_decisions(rest[2]) if self.with_status else {},
            devices=parse_decisions(rest[3]) if self.with_status else {},
        )

    def _load(self) -> None:
        self.sha = self.conn.script_load(PROBE_LUA)
        self.round_trips += 1

    def _execute(self, queues: list[str]) -> list[Any]:
        pipe = self.conn.pipeline(transaction=False)
        for q in queues:
            pipe.evalsha(str(self.sha), 1, keys.jobs(q), keys.GROUP, LAG_COUNT_CAP)
        pipe.hgetall(keys.WORKERS)
        pipe.hgetall(keys.SCALE)
        if self.with_status:
            pipe.hgetall(keys.DECISIONS)
            pipe.hgetall(keys.DEVICES)
        self.round_trips += 1
        return pipe.execute(raise_on_error=False)
