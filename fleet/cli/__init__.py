"""The `fleet` command: a thin click layer over the service functions."""

from __future__ import annotations

from pathlib import Path

import click

from fleet.cli import acl, bench, commands, demo, dlq, scale, status, submit


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "-c", type=click.Path(dir_okay=False, path_type=Path), envvar="FLEET_CONFIG",
              help="fleet YAML config (or FLEET_CONFIG)")
@click.option("--redis-url", envvar=None, help="override redis.url (FLEET_REDIS__URL works too)")
@click.version_option(package_name="fleet")
@click.pass_context
def main(ctx: click.Context, config: Path | None, redis_url: str | None) -> None:
    """Fleet: ML inference jobs on device-pinned workers fed by Redis Streams."""
    ctx.ensure_object(dict)
    ctx.obj.update(config=config, redis_url=redis_url)


for command in (*commands.COMMANDS, submit.submit_cmd, demo.demo_cmd, scale.scale_cmd, status.status_cmd,
                dlq.dlq_cmd, acl.acl_cmd, bench.bench_cmd):
    main.add_command(command)
