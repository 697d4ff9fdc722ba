"""`fleet up`, `scaler`, `worker`, `devices`, `job`."""

from __future__ import annotations

import json
import os
import re
import sys

import click

from fleet.cli.common import emit_json, handle_errors, human_bytes, load, load_connected, table
from fleet.client import Client
from fleet.logs import setup_logging
from fleet.redis_server import find_redis_server
from fleet.workerspec import WorkerSpec, new_worker_id


@click.command("up")
@click.pass_context
@handle_errors
def up_cmd(ctx: click.Context) -> None:
    """Bring the fleet up: its own redis-server when no URL is set, the scaler and
    the configured workers. Ctrl-C drains every worker and stops everything."""
    from fleet.cli.up import run_foreground

    settings = load(ctx)
    setup_logging(settings.log_level, settings.log_json)
    own_redis = settings.redis.url is None
    if own_redis:
        find_redis_server()  # one clear line when it is missing
    run_foreground(settings, own_redis)


@click.command("scaler")
@click.pass_context
@handle_errors
def scaler_cmd(ctx: click.Context) -> None:
    """Run the scaler daemon alone against an existing Redis (one per host)."""
    from fleet.cli.up import run_foreground

    settings = load_connected(ctx)
    setup_logging(settings.log_level, settings.log_json)
    run_foreground(settings, own_redis=False)


@click.command("worker")
@click.option("--queue", "-q", required=True, help="queue to serve (declared in the config)")
@click.option("--device", "-d", default="cpu", show_default=True,
              help="device id from `fleet devices` (cpu, nvidia-<uuid>, sim-0, ...)")
@click.pass_context
@handle_errors
def worker_cmd(ctx: click.Context, queue: str, device: str) -> None:
    """Run one worker in this process, pinned to DEVICE, until SIGTERM."""
    from scheduler.devices import backend_for_device, discover
    from worker.process import Worker

    settings = load_connected(ctx)
    settings.queue(queue)
    selector = device.split("-", 1)[0] if not device.startswith("sim-") else f"sim:{int(device[4:]) + 1}"
    found = {d.id: d for d in discover(selector if selector != "cpu" else "cpu")}
    if device not in found:
        raise click.BadParameter(f"no device {device!r} here (found: {', '.join(found) or 'none'})",
                                 param_hint="--device")
    dev = found[device]
    backend = backend_for_device(dev)
    os.environ.update(backend.pin_env(dev))  # before any model code is imported
    backend.pin_process(dev)
    setup_logging(settings.log_level, settings.log_json)
    spec = WorkerSpec(settings, queue, dev.id, dev.vendor, dev.cpus, new_worker_id(queue, dev.id))
    sys.exit(Worker(spec).run())


@click.command("devices")
@click.option("--select", "selector", default="auto", show_default=True,
              help="auto | cpu | nvidia | amd | sim:N")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@handle_errors
def devices_cmd(selector: str, as_json: bool) -> None:
    """List the devices this host offers (NVIDIA via NVML, AMD, else CPU)."""
    from scheduler.devices import backends_for, describe

    try:
        rows = describe(backends_for(selector))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--select") from None
    if as_json:
        emit_json(rows)
        return
    click.echo(table(
        [(r["id"], r["vendor"], r["index"], r["name"], human_bytes(r["memory_used_bytes"]),  # type: ignore[arg-type]
          human_bytes(r["memory_total_bytes"]),  # type: ignore[arg-type]
          "-" if r["utilization"] is None else f"{float(r['utilization']):.0%}")  # type: ignore[arg-type]
         for r in rows],
        ["DEVICE", "VENDOR", "INDEX", "NAME", "MEM USED", "MEM TOTAL", "UTIL"],
    ))


@click.command("job")
@click.argument("queue")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handle_errors
def job_cmd(ctx: click.Context, queue: str, job_id: str, as_json: bool) -> None:
    """Show one job's state and outcome (state: queued, running, retrying, done, failed, dead)."""
    if not re.fullmatch(r"[0-9]{1,20}-[0-9]{1,20}", job_id):
        raise click.BadParameter(f"{job_id!r} is not a job ID (they look like 1733234567890-0)",
                                 param_hint="JOB_ID")
    settings = load_connected(ctx)
    with Client(settings.redis, reply=False) as client:
        client.queue_info(queue)  # UnknownQueue for a queue no fleet declared
        status = client.job_status(queue, job_id)
        outcome = None
        if status in ("done", "failed", "dead"):
            outcome = client.wait_outcomes(queue, [job_id], 0.0)[job_id]
    data: dict[str, object] = {"queue": queue, "id": job_id, "status": status}
    if outcome is not None:
        data.update(value=outcome.value, error=outcome.error, attempts=outcome.attempts,
                    worker=outcome.worker, history=list(outcome.history))
    if as_json:
        emit_json(data)
        return
    for key, value in data.items():
        if value in (None, []) and key in ("error", "history"):
            continue
        shown = json.dumps(value, default=repr) if key == "value" else value
        click.echo(f"{key:>9}: {shown}")


COMMANDS = (up_cmd, scaler_cmd, worker_cmd, devices_cmd, job_cmd)
