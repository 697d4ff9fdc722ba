"""`fleet status`: the truth at a glance. Per queue the backlog, pending jobs, oldest
wait, ack rate, actual vs desired workers and the scaler's last reason; per device
its utilisation, memory and workers; every worker with its state. Live signals
come from one round trip (`scaler.signals`); desired counts and reasons from the
scalers' ``fleet:decisions``, device readings from ``fleet:devices``."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import click
import redis

from fleet import keys
from fleet.cli.common import emit_json, handle_errors, human_bytes, load_connected, table
from fleet.connection import connect
from scaler.daemon import fresh_records, stale_after_s
from scaler.signals import (
    RateTracker,
    Reading,
    SignalReader,
    WorkerRecord,
    acked_total,
    lag_of,
    oldest_wait_s,
)

DEVICE_STALE_S = 30.0  # device readings older than this are not shown


def _age_s(now_s: float, ms: int | None) -> float | None:
    return None if not ms else max(0.0, now_s - ms / 1000)


def queue_rows(reading: Reading, records: dict[str, WorkerRecord], rates: RateTracker | None,
               now_s: float) -> list[dict[str, Any]]:
    rows = []
    for name, raw in sorted(reading.queues.items()):
        mine = [r for r in records.values() if r.queue == name]
        decided = reading.decisions.get(name, {})
        rate = decided.get("rate_per_s")
        if rates is not None:  # --watch: our own rate once there are two samples
            rates.observe(name, acked_total(raw), now_s)
            rate = round(rates.rate(name), 3) if rates.known(name) else rate
        override = reading.overrides.get(name)
        rows.append({
            "queue": name, "backlog": lag_of(raw), "pending": raw.pending, "length": raw.length,
            "oldest_wait_s": oldest_wait_s(raw), "rate_per_s": rate,
            "workers": sum(1 for r in mine if r.state != "draining"),
            "states": dict(Counter(r.state for r in mine)),
            "desired": decided.get("desired"), "reason": decided.get("held") or decided.get("reason"),
            "mode": decided.get("mode"), "decided_age_s": _age_s(now_s, decided.get("at_ms")),
            "override": None if override is None else override.__dict__,
        })
    return rows


def worker_rows(records: dict[str, WorkerRecord], now_s: float) -> list[dict[str, Any]]:
    return [{
        "id": r.id, "queue": r.queue, "host": r.host, "device": r.device, "state": r.state, "pid": r.pid,
        "done": r.done, "failed": r.failed, "load_s": r.load_s, "beat_age_s": _age_s(now_s, r.beat_ms),
        "last_busy_age_s": _age_s(now_s, r.last_busy_ms),
    } for r in sorted(records.values(), key=lambda r: (r.queue, r.host, r.device, r.id))]


def device_rows(reading: Reading, records: dict[str, WorkerRecord], now_s: float) -> list[dict[str, Any]]:
    """Published device readings, plus any device a live worker names (reading unknown)."""
    rows: dict[str, dict[str, Any]] = {}
    for key, d in reading.devices.items():
        age = _age_s(now_s, d.get("at_ms"))
        if age is not None and age <= DEVICE_STALE_S:
            rows[key] = {"device": key, "utilization": d.get("utilization"),
                         "memory_used_bytes": d.get("memory_used_bytes"),
                         "memory_total_bytes": d.get("memory_total_bytes"), "workers": {}}
    for r in records.values():
        key = f"{r.host}/{r.device}"
        row = rows.setdefault(key, {"device": key, "utilization": None, "memory_used_bytes": None,
                                    "memory_total_bytes": None, "workers": {}})
        row["workers"][r.state] = row["workers"].get(r.state, 0) + 1
    return [rows[k] for k in sorted(rows)]


def collect(conn: redis.Redis, reader: SignalReader, queues: list[str], stale_s: float,
            rates: RateTracker | None = None) -> dict[str, Any]:
    names = (k.decode() if isinstance(k, bytes) else k for k in conn.hkeys(keys.QUEUES))
    declared = sorted({*queues, *names})
    reading = reader.read(declared)
    now_s = time.time()
    records = fresh_records(reading.workers, now_s, stale_s)
    return {
        "at_ms": int(now_s * 1000),
        "queues": queue_rows(reading, records, rates, now_s),
        "devices": device_rows(reading, records, now_s),
        "workers": worker_rows(records, now_s),
        "hosts": host_rows(conn, now_s),
    }


def host_rows(conn: redis.Redis, now_s: float) -> list[dict[str, Any]]:
    """Each host's scaler: cgroup slices and device isolation (or why not), crash loops."""
    from scheduler.supervisor import host_statuses

    rows = []
    for name, h in sorted(host_statuses(conn).items()):
        cgroups, isolation = h.get("cgroups") or {}, h.get("isolation") or {}
        rows.append({
            "host": name, "scaler_pid": h.get("scaler_pid"), "beat_age_s": _age_s(now_s, h.get("beat_ms")),
            "cgroups": "on" if cgroups.get("available") else f"off: {cgroups.get('reason', '?')}",
            "isolation": "on" if isolation.get("on") else f"off: {isolation.get('reason', '?')}",
            "crashloops": sorted((h.get("crashloops") or {}).keys()),
            "workers": h.get("workers"),
        })
    return rows


def _cut(text: Any, width: int) -> str:
    s = "-" if text is None else str(text)
    if len(s) <= width:
        return s
    head = (width - 1) // 2
    return s[:head] + "~" + s[len(s) - (width - 1 - head):]


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}s" if value < 100 else f"{value / 60:.0f}m"


def _states(counts: dict[str, int]) -> str:
    order = ("busy", "idle", "loading", "starting", "draining")
    return " ".join(f"{counts[s]} {s}" for s in order if counts.get(s)) or "-"


def render(data: dict[str, Any]) -> str:
    """Four tables that fit 80 columns: queues, devices, workers, hosts."""
    queues = table([(
        _cut(q["queue"], 14), q["backlog"], q["pending"], _secs(q["oldest_wait_s"]),
        "-" if q["rate_per_s"] is None else f"{q['rate_per_s']:.1f}",
        f"{q['workers']}/{'-' if q['desired'] is None else q['desired']}", _cut(q["reason"], 18),
    ) for q in data["queues"]], ["QUEUE", "BACKLOG", "PENDING", "WAIT", "ACK/S", "NOW/WANT", "REASON"])
    devices = table([(
        _cut(d["device"], 26), "-" if d["utilization"] is None else f"{d['utilization']:.0%}",
        f"{human_bytes(d['memory_used_bytes'])} / {human_bytes(d['memory_total_bytes'])}",
        _cut(_states(d["workers"]), 24),
    ) for d in data["devices"]], ["DEVICE", "UTIL", "MEMORY", "WORKERS"])
    workers = table([(
        _cut(w["id"], 26), _cut(w["queue"], 12), _cut(w["device"], 12), w["state"], w["done"],
        _secs(w["beat_age_s"]), _secs(w["last_busy_age_s"]),
    ) for w in data["workers"]], ["WORKER", "QUEUE", "DEVICE", "STATE", "DONE", "BEAT", "BUSY"])
    hosts = table([(
        _cut(h["host"], 14), _secs(h["beat_age_s"]), _cut(h["cgroups"], 22), _cut(h["isolation"], 20),
        _cut(",".join(h["crashloops"]) or "-", 12),
    ) for h in data.get("hosts", [])], ["HOST", "BEAT", "CGROUPS", "ISOLATION", "CRASH LOOP"])
    return f"{queues}\n\n{devices}\n\n{workers}\n\n{hosts}"


@click.command("status")
@click.option("--watch", is_flag=True, help="refresh until Ctrl-C")
@click.option("--interval", "interval_s", type=click.FloatRange(0.2, 60), default=1.0, show_default=True,
              help="seconds between refreshes with --watch")
@click.option("--count", type=click.IntRange(0), default=0,
              help="with --watch: stop after N refreshes (0: never)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output (one document per refresh)")
@click.pass_context
@handle_errors
def status_cmd(ctx: click.Context, watch: bool, interval_s: float, count: int, as_json: bool) -> None:
    """Queues, devices and workers of the fleet, as the scalers see them."""
    settings = load_connected(ctx)
    conn = connect(settings.redis)
    reader = SignalReader(conn, with_status=True)
    rates = RateTracker() if watch else None
    shown = 0
    try:
        while True:
            data = collect(conn, reader, list(settings.queues), stale_after_s(settings), rates)
            if as_json:
                emit_json(data)
            else:
                if watch:
                    click.clear()
                click.echo(render(data))
            shown += 1
            if not watch or (count and shown >= count):
                return
            time.sleep(interval_s)
    except KeyboardInterrupt:
        return
    finally:
        conn.close()
