"""Shared CLI plumbing: named exit codes, settings from --config, errors as usage lines."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
import redis

from fleet.errors import ConfigError, ConnectionFailed, FleetError, JobFailed, translate_redis_error
from fleet.runtime import resolve_redis
from fleet.settings import FleetSettings, load_settings

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_UNAVAILABLE = 4
EXIT_JOB_FAILED = 5

F = TypeVar("F", bound=Callable[..., Any])


def load(ctx: click.Context, **overrides: Any) -> FleetSettings:
    """The settings tree, built once per command from --config / FLEET_CONFIG / env."""
    path: Path | None = ctx.find_root().obj.get("config")
    url: str | None = ctx.find_root().obj.get("redis_url")
    if url is not None:
        overrides.setdefault("redis", {"url": url})
    return load_settings(path, **overrides)


def load_connected(ctx: click.Context) -> FleetSettings:
    settings = resolve_redis(load(ctx))
    if settings.redis.url is None:
        raise ConnectionFailed(
            "no Redis configured and no private fleet running here: "
            "start one with `fleet up`, or pass --redis-url / set FLEET_REDIS__URL"
        )
    return settings


def fail(message: str, code: int) -> None:
    click.echo(f"fleet: error: {message}", err=True)
    sys.exit(code)


def handle_errors(fn: F) -> F:
    """FleetErrors become one clear line and a named exit code; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            fail(str(exc), EXIT_CONFIG)
        except ConnectionFailed as exc:
            fail(str(exc), EXIT_UNAVAILABLE)
        except JobFailed as exc:
            fail(str(exc), EXIT_JOB_FAILED)
        except FleetError as exc:
            fail(str(exc), EXIT_FAILURE)
        except redis.RedisError as exc:
            fail(str(translate_redis_error(exc)), EXIT_UNAVAILABLE)

    return wrapper  # type: ignore[return-value]


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain aligned table that fits a terminal."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
