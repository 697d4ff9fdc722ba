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
import redis.exceptions as rex
from redis.asyncio.retry import Retry as AsyncRetry
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


class HandshakeRefused(redis.ConnectionError):
    """The server dropped a new connection during the handshake (TLS mismatch)."""


def is_transient(exc: BaseException) -> bool:
    """Whether retrying `exc` can help: refused credentials, a certificate the CA
    does not vouch for and a TLS/plaintext mismatch cannot, so they fail at once."""
    if isinstance(exc, rex.AuthenticationError | rex.AuthorizationError | HandshakeRefused):
        return False
    seen: BaseException | None = exc
    for _ in range(8):  # the ssl error sits in the chain of redis-py's ConnectionError
        if seen is None:
            break
        if isinstance(seen, ssl.SSLError):
            return False
        seen = seen.__cause__ or seen.__context__
    return True


class _TransientRetry(Retry):
    """redis-py's Retry, limited to errors that `is_transient` accepts."""

    def call_with_retry(
        self, do: Any, fail: Any, is_retryable: Any = None, with_failure_count: bool = False
    ) -> Any:
        return super().call_with_retry(do, fail, _only_transient(is_retryable), with_failure_count)


class _AsyncTransientRetry(AsyncRetry):
    async def call_with_retry(
        self, do: Any, fail: Any, is_retryable: Any = None, with_failure_count: bool = False
    ) -> Any:
        return await super().call_with_retry(do, fail, _only_transient(is_retryable), with_failure_count)


def _only_transient(is_retryable: Any) -> Any:
    return lambda exc: is_transient(exc) and (is_retryable is None or is_retryable(exc))


def _refused(exc: redis.ConnectionError) -> bool:
    cause = exc.__cause__ or exc.__context__
    return isinstance(cause, ConnectionResetError | ssl.SSLError)


def _handshake(conn: Any) -> None:
    """AUTH/SELECT as usual; a reset mid-handshake is a TLS mismatch, not a blip."""
    try:
        conn.on_connect_check_health(check_health=False)
    except redis.ConnectionError as exc:
        if _refused(exc) and not isinstance(exc, redis.AuthenticationError):
            raise HandshakeRefused(_mismatch(conn)) from exc
        raise


async def _handshake_async(conn: Any) -> None:
    try:
        await conn.on_connect_check_health(check_health=False)
    except redis.ConnectionError as exc:
        if _refused(exc) and not isinstance(exc, redis.AuthenticationError):
            raise HandshakeRefused(_mismatch(conn)) from exc
        raise


def _mismatch(conn: Any) -> str:
    where = f"{getattr(conn, 'host', '?')}:{getattr(conn, 'port', '?')}"
    return f"{where} reset the connection during the handshake (a TLS port needs rediss://)"


def _options(cfg: RedisSettings, *, block_ms: int) -> dict[str, Any]:
    if cfg.url is None:
        raise ConfigError("redis.url is not set (fleet up sets it for its private redis-server)")
    opts: dict[str, Any] = {
        "socket_connect_timeout": cfg.connect_timeout_s,
        # a blocking read waits up to block_ms on top of the usual socket timeout
        "socket_timeout": cfg.socket_timeout_s + block_ms / 1000,
        "socket_keepalive": True,
        "health_check_interval": 30,
        # transient network errors only: see is_transient
        "retry": _TransientRetry(ExponentialWithJitterBackoff(base=0.05, cap=2.0), 3),
        "redis_connect_func": _handshake,
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
    opts["retry"] = _AsyncTransientRetry(ExponentialWithJitterBackoff(base=0.05, cap=2.0), 3)
    opts["redis_connect_func"] = _handshake_async
    return aioredis.Redis.from_url(cfg.url or "", **opts)
