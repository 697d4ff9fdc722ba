"""Where a running fleet's Redis is: the configured URL, or the private
redis-server that `fleet up` started (recorded in the state dir)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fleet.settings import FleetSettings, RedisSettings

STATE_FILE = "redis.json"


def state_file(settings: FleetSettings) -> Path:
    return settings.state_dir / STATE_FILE


def record_private_redis(settings: FleetSettings, url: str, password: str) -> RedisSettings:
    """Write the private server's address (and its password, in a 0600 file)."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    pw_file = settings.state_dir / "redis.password"
    fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    state_file(settings).write_text(json.dumps({"url": url, "password_file": str(pw_file.resolve())}))
    return settings.redis.model_copy(update={"url": url, "password_file": pw_file.resolve()})


def forget_private_redis(settings: FleetSettings) -> None:
    for name in (STATE_FILE, "redis.password"):
        (settings.state_dir / name).unlink(missing_ok=True)


def resolve_redis(settings: FleetSettings) -> FleetSettings:
    """Settings with a Redis URL: the configured one, else the running private one."""
    if settings.redis.url is not None:
        return settings
    path = state_file(settings)
    if not path.exists():
        return settings
    data = json.loads(path.read_text())
    redis = settings.redis.model_copy(
        update={"url": data["url"], "password_file": Path(data["password_file"])}
    )
    return settings.model_copy(update={"redis": redis})
