"""`fleet bench`: Fleet's throughput, latency and memory against the raw Redis
ceiling and the model called directly, measured in one run on a private
redis-server and a fleet spawned as `fleet up` spawns it."""

from __future__ import annotations

import os

import click

from fleet.cli.common import emit_json, handle_errors, table
from fleet.logs import setup_logging


@click.command("bench")
@click.option("--quick", is_flag=True, help="small sizes: well under a minute")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def bench_cmd(quick: bool, as_json: bool) -> None:
    """Measure no-op and embedding jobs end to end next to their ceilings."""
    from fleet.benchkit import harness, report

    setup_logging("WARNING")
    result = harness.run(harness.QUICK if quick else harness.FULL, on_step=None if as_json else _step)
    result["targets"] = report.targets(result)
    if as_json:
        emit_json(result)
        return
    click.echo(table(report.table_rows(result), report.HEADERS))
    before, after = result["load_avg_before"], result["load_avg_after"]
    click.echo(
        f"\n{result['cpus']} CPUs; load average {before[0]:.2f} before, {after[0]:.2f} after "
        f"(pid {os.getpid()})"
    )


def _step(message: str) -> None:
    click.echo(f"bench: {message}", err=True)
