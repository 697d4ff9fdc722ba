"""Redis connections built from settings: AUTH, ACL users, TLS, timeouts, retries.

This is the one adapter between Fleet and redis-py's connection options. URLs
are shown only through `redact_url`.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from fleet.errors import ConfigError
from fleet.settings import RedisSettings


def redact_url(url: str | None) -> str:
    """The URL with any password replaced by ***."""
    if not url:
        return "(private redis-server)"
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _options(cfg: RedisSettings, *, block_ms: int) -> dict[str, Any]:
    if cfg.url is None:
        raise ConfigError("redis.url is not set (fleet up sets it for its private redis-server)")
    opts: dict[str, Any] = {
        "socket_connect_timeout": cfg.connect_timeout_s,
        # a blocking read waits up to block_ms on top of the usual socket timeout
        "socket_timeout": cfg.socket_timeout_s + block_ms / 1000,
        "socket_keepalive": True,
        "health_check_interval": 30,
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=2.0), 3),
        "client_name": None,
    }
    if cfg.username is not None:
        opts["username"] = cfg.username
    password = cfg.resolved_password()
    if password is not None:
        opts["password"] = password
    if cfg.url.startswith("rediss://"):
        opts["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        if cfg.tls_ca_file is not None:
            opts["ssl_ca_certs"] = str(cfg.tls_ca_file)
        if cfg.tls_cert_file is not None:
            opts["ssl_certfile"] = str(cfg.tls_cert_file)
        if cfg.tls_key_file is not None:
            opts["ssl_keyfile"] = str(cfg.tls_key_file)
    return opts


def connect(cfg: RedisSettings, *, block_ms: int = 0) -> redis.Redis:
    """A sync client; `block_ms` is the longest BLOCK this connection will issue."""
    opts = _options(cfg, block_ms=block_ms)
    return redis.Redis.from_url(cfg.url or "", **opts)


def connect_async(cfg: RedisSettings, *, block_ms: int = 0) -> aioredis.Redis:
    opts = _options(cfg, block_ms=block_ms)
    return aioredis.Redis.from_url(cfg.url or "", **opts)
