"""`fleet scale`: pin a queue's worker count, change its bounds, or hand it back to
the autoscaler. Writes ``fleet:scale``; every scaler applies it within one tick.
``--dry-run`` shows what the policy would decide right now, and why."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import click
import redis

from fleet import keys
from fleet.cli.common import emit_json, handle_errors, load_connected
from fleet.codec import DecodeError, QueueInfo
from fleet.connection import connect
from fleet.errors import UnknownQueue
from fleet.settings import FleetSettings, QueueSettings
from scaler.daemon import ScalerLoop, decide_on_devices
from scaler.model import PolicyState, QueueDecision, QueueSnapshot, ScaleOverride
from scaler.signals import SignalReader, encode_override, parse_override
from scheduler.devices import discover
from scheduler.supervisor import Supervisor


def new_override(
    current: ScaleOverride, replicas: int | None, min_: int | None, max_: int | None, auto: bool
) -> ScaleOverride | None:
    """The override after this command; None removes it (back to the config)."""
    if auto:
        return None
    if replicas is not None:
        return ScaleOverride(replicas, current.min, current.max)
    if min_ is None and max_ is None:
        return current
    return ScaleOverride(
        None, min_ if min_ is not None else current.min, max_ if max_ is not None else current.max
    )


def _check_args(replicas: int | None, min_: int | None, max_: int | None, auto: bool, dry_run: bool) -> None:
    modes = sum((replicas is not None, min_ is not None or max_ is not None, auto))
    if modes > 1:
        raise click.UsageError("choose one of --replicas N, --min/--max, --auto")
    if modes == 0 and not dry_run:
        raise click.UsageError("say what to do: --replicas N, --min N --max N, or --auto (or --dry-run)")
    if min_ is not None and max_ is not None and min_ > max_:
        raise click.BadParameter(f"--min {min_} is above --max {max_}", param_hint="--min")


def queue_settings(settings: FleetSettings, conn: redis.Redis, queue: str) -> QueueSettings:
    """The queue's settings from the config, or defaults for a queue a fleet declared."""
    if queue in settings.queues:
        return settings.queues[queue]
    data = conn.hget(keys.QUEUES, queue)
    if data is None:
        raise UnknownQueue(queue)
    try:
        handler = QueueInfo.decode(queue, data).handler  # type: ignore[arg-type]
    except DecodeError:
        raise UnknownQueue(queue) from None
    return QueueSettings(handler=handler)


def dry_run(
    settings: FleetSettings, conn: redis.Redis, queue: str, override: ScaleOverride | None
) -> tuple[QueueSnapshot, QueueDecision]:
    """What the policy would decide for `queue` now, with `override` in place (stateless:
    no cooldown or stabilisation history). The rate is the running scaler's."""
    q = settings.queues[queue]
    only = settings.model_copy(update={"queues": {queue: q}})
    loop = ScalerLoop(only, Supervisor(only, None), {queue: discover(q.device)}, conn=conn)
    loop.reader = SignalReader(conn, with_status=True)
    reading = loop.reader.read([queue])
    overrides = dict(reading.overrides)
    if override is None:
        overrides.pop(queue, None)
    else:
        overrides[queue] = override
    reading = replace(reading, overrides=overrides)
    snapshot = loop.snapshot(reading, time.time(), time.monotonic(), frozenset())
    rate = float(reading.decisions.get(queue, {}).get("rate_per_s") or 0.0)
    snap = replace(snapshot.queues[queue], completion_rate_per_s=rate)
    snapshot = replace(snapshot, queues={queue: snap})
    decision = decide_on_devices(snapshot, PolicyState(), loop.policies(), loop.allowed)
    return snap, decision.queues[queue]


def describe_plan(queue: str, snap: QueueSnapshot, qd: QueueDecision) -> list[str]:
    wait = "-" if snap.oldest_wait_s is None else f"{snap.oldest_wait_s:.1f}s"
    o = snap.override
    lines = [
        f"queue {queue}: {qd.current} -> {qd.desired} workers ({qd.reason})",
        f"  signals: backlog {snap.lag}, pending {snap.pending}, oldest wait {wait}, "
        f"rate {snap.completion_rate_per_s:.1f}/s",
        f"  need {qd.raw_need}, within bounds {qd.clamped}; override replicas={_dash(o.replicas)} "
        f"min={_dash(o.min)} max={_dash(o.max)}",
    ]
    if qd.add_devices:
        lines.append(f"  would start {qd.add} on {', '.join(sorted(set(qd.add_devices)))}")
    if qd.retire:
        lines.append(f"  would drain {', '.join(qd.retire)}")
    lines.append("  (stateless: the running scaler also applies its cooldown and stabilisation window)")
    return lines


def _dash(value: int | None) -> str:
    return "-" if value is None else str(value)


def _plan_json(queue: str, snap: QueueSnapshot, qd: QueueDecision) -> dict[str, Any]:
    return {
        "queue": queue, "current": qd.current, "desired": qd.desired, "raw_need": qd.raw_need,
        "clamped": qd.clamped, "reason": qd.reason, "add_devices": list(qd.add_devices),
        "retire": list(qd.retire), "lag": snap.lag, "pending": snap.pending,
        "oldest_wait_s": snap.oldest_wait_s, "rate_per_s": snap.completion_rate_per_s,
        "override": {"replicas": snap.override.replicas, "min": snap.override.min, "max": snap.override.max},
    }


@click.command("scale")
@click.argument("queue")
@click.option("--replicas", type=click.IntRange(0, 4096), help="pin the queue at N workers")
@click.option("--min", "min_", type=click.IntRange(0, 4096), help="new lower bound (autoscaling)")
@click.option("--max", "max_", type=click.IntRange(1, 4096), help="new upper bound (autoscaling)")
@click.option("--auto", is_flag=True, help="remove the override: back to the config's bounds")
@click.option("--dry-run", is_flag=True, help="show what the policy would do now; write nothing")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
@handle_errors
def scale_cmd(ctx: click.Context, queue: str, replicas: int | None, min_: int | None, max_: int | None,
              auto: bool, dry_run: bool, as_json: bool) -> None:
    """Pin QUEUE at --replicas N, set --min/--max for the autoscaler, or --auto to undo.

    --replicas keeps earlier --min/--max; --min/--max clear a pinned count."""
    _check_args(replicas, min_, max_, auto, dry_run)
    settings = load_connected(ctx)
    conn = connect(settings.redis)
    try:
        q = queue_settings(settings, conn, queue)
        settings = settings.model_copy(update={"queues": {**settings.queues, queue: q}})
        raw = conn.hget(keys.SCALE, queue)
        current = parse_override(raw) if raw is not None else ScaleOverride()  # type: ignore[arg-type]
        override = new_override(current, replicas, min_, max_, auto)
        if dry_run:
            _show_plan(settings, conn, queue, override, as_json)
            return
        _write(conn, queue, override)
    finally:
        conn.close()
    if as_json:
        emit_json({"queue": queue, "override": None if override is None else override.__dict__})
    else:
        click.echo(f"queue {queue}: {_summary(override)} (applied by every scaler within one tick)")


def _show_plan(settings: FleetSettings, conn: redis.Redis, queue: str, override: ScaleOverride | None,
               as_json: bool) -> None:
    snap, qd = dry_run(settings, conn, queue, override)
    if as_json:
        emit_json(_plan_json(queue, snap, qd))
    else:
        click.echo("\n".join(describe_plan(queue, snap, qd)))


def _write(conn: redis.Redis, queue: str, override: ScaleOverride | None) -> None:
    if override is None or override == ScaleOverride():
        conn.hdel(keys.SCALE, queue)
    else:
        conn.hset(keys.SCALE, queue, encode_override(override))


def _summary(override: ScaleOverride | None) -> str:
    if override is None or override == ScaleOverride():
        return "autoscaled within the configured bounds"
    if override.replicas is not None:
        return f"pinned at {override.replicas} workers"
    return f"autoscaled between {_dash(override.min)} and {_dash(override.max)} workers"
