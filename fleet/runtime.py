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


class StateDirLock:
    """One `fleet up` per state dir: an exclusive flock on <state_dir>/fleet.lock."""

    def __init__(self, settings: FleetSettings) -> None:
        self.path = settings.state_dir / "fleet.lock"
        self._fd: int | None = None

    def __enter__(self) -> StateDirLock:
        import fcntl

        from fleet.errors import FleetError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise FleetError(f"another `fleet up` (pid {holder}) is running with state dir "
                             f"{self.path.parent}; stop it first or use another state_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None


def surviving_private_redis(settings: FleetSettings) -> RedisSettings | None:
    """The private redis-server a killed `fleet up` left running, if it still answers."""
    import redis as redis_py

    found = resolve_redis(settings)
    if settings.redis.url is not None or found.redis.url is None:
        return None
    try:
        conn = redis_py.Redis.from_url(found.redis.url, password=found.redis.resolved_password(),
                                       socket_connect_timeout=0.5, socket_timeout=1)
        with conn:
            conn.ping()
    except (redis_py.RedisError, OSError):
        return None
    return found.redis
