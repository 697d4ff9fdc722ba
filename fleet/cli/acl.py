"""`fleet acl print`: least-privilege Redis ACL rules for this fleet's config."""

from __future__ import annotations

import click

from fleet.acl import render_acl
from fleet.cli.common import handle_errors, load


@click.group("acl")
def acl_cmd() -> None:
    """Redis ACL rules for the submitter, worker and operator roles."""


@acl_cmd.command("print")
@click.option("--client-prefix", default="svc", show_default=True,
              help="client id prefix the submitting service uses (Client(client_id_prefix=...))")
@click.option("--aclfile", is_flag=True, help="aclfile lines instead of ACL SETUSER commands")
@click.pass_context
@handle_errors
def print_cmd(ctx: click.Context, client_prefix: str, aclfile: bool) -> None:
    """Print the rules; replace each <role-password> placeholder before loading them."""
    click.echo(render_acl(load(ctx), client_prefix=client_prefix, aclfile=aclfile))
