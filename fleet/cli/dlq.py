"""`fleet dlq ls|show|replay|purge QUEUE`."""

from __future__ import annotations

import datetime as dt

import click
import redis

from fleet import dlq, keys
from fleet.cli.common import emit_json, handle_errors, load_connected, table
from fleet.connection import connect
from fleet.errors import FleetError, UnknownQueue


def require_queue(conn: redis.Redis, queue: str) -> None:
    if not keys.valid_queue_name(queue) or not conn.hexists(keys.QUEUES, queue):
        raise UnknownQueue(queue)


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def _as_dict(d: dlq.DeadLetter) -> dict:
    return {"id": d.job_id, "attempts": d.attempts, "error": d.error, "worker": d.worker,
            "history": list(d.history), "dead_at": _when(d.dead_ms), "payload": d.payload}


@click.group("dlq")
def dlq_cmd() -> None:
    """Dead letters: jobs that used up their deliveries."""


@dlq_cmd.command("ls")
@click.argument("queue")
@click.option("--count", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handle_errors
def ls_cmd(ctx: click.Context, queue: str, count: int, as_json: bool) -> None:
    """List the newest dead letters of QUEUE."""
    conn = connect(load_connected(ctx).redis)
    require_queue(conn, queue)
    letters = dlq.list_dead(conn, queue, count)
    if as_json:
        emit_json([_as_dict(d) for d in letters])
        return
    click.echo(table([(d.job_id, d.attempts, _when(d.dead_ms), d.error[:40]) for d in letters],
                     ["JOB", "TRIES", "DEAD AT", "ERROR"]))


@dlq_cmd.command("show")
@click.argument("queue")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handle_errors
def show_cmd(ctx: click.Context, queue: str, job_id: str, as_json: bool) -> None:
    """Show one dead job: its payload, error and every attempt's error."""
    conn = connect(load_connected(ctx).redis)
    require_queue(conn, queue)
    letter = dlq.find(conn, queue, job_id)
    if letter is None:
        raise FleetError(f"no dead letter for job {job_id} in queue {queue!r}")
    data = _as_dict(letter)
    if as_json:
        emit_json(data)
        return
    for key in ("id", "attempts", "dead_at", "worker", "error", "payload"):
        click.echo(f"{key:>9}: {data[key]!r}" if key == "payload" else f"{key:>9}: {data[key]}")
    for n, err in enumerate(letter.history, 1):
        click.echo(f"  try {n}: {err}")


@dlq_cmd.command("replay")
@click.argument("queue")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="replay every dead letter of QUEUE")
@click.pass_context
@handle_errors
def replay_cmd(ctx: click.Context, queue: str, job_ids: tuple[str, ...], replay_all: bool) -> None:
    """Put dead jobs back on QUEUE under their original IDs."""
    if not job_ids and not replay_all:
        raise click.UsageError("name JOB_IDS or pass --all")
    conn = connect(load_connected(ctx).redis)
    require_queue(conn, queue)
    if replay_all:
        letters = dlq.list_dead(conn, queue, 100_000)
    else:
        found = [dlq.find(conn, queue, j) for j in job_ids]
        missing = [j for j, f in zip(job_ids, found, strict=True) if f is None]
        if missing:
            raise FleetError(f"no dead letter for {', '.join(missing)} in queue {queue!r}")
        letters = [f for f in found if f is not None]
    click.echo(f"replayed {dlq.replay(conn, queue, letters)} job(s) to {queue}")


@dlq_cmd.command("purge")
@click.argument("queue")
@click.option("--yes", is_flag=True, help="do not ask")
@click.pass_context
@handle_errors
def purge_cmd(ctx: click.Context, queue: str, yes: bool) -> None:
    """Delete every dead letter of QUEUE."""
    if not yes:
        click.confirm(f"delete every dead letter of {queue!r}?", abort=True)
    click.echo(f"purged {dlq.purge(connect(load_connected(ctx).redis), queue)} dead letter(s)")
