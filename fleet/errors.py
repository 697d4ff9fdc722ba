"""Every error Fleet raises, in one place.

`FleetError` is the root. Submitting services catch the subclasses below;
`Retry` and `Poison` are control-flow signals a handler may raise and are kept
apart from real errors. redis-py errors are translated in `translate_redis_error`
and nowhere else: nobody matches on error text.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class FleetError(Exception):
    """Root of every error Fleet raises on purpose."""


class ConfigError(FleetError):
    """The configuration is invalid; the message names the key and the value."""


class UnknownQueue(FleetError):
    """The queue is not declared by any running fleet."""

    def __init__(self, queue: str) -> None:
        super().__init__(f"unknown queue {queue!r}: no fleet has declared it")
        self.queue = queue


class PayloadTooLarge(FleetError):
    """The encoded payload is over the queue's `max_payload_bytes`; nothing was written."""

    def __init__(self, queue: str, size_bytes: int, limit_bytes: int) -> None:
        super().__init__(
            f"payload of {size_bytes} bytes is over the {limit_bytes}-byte limit of queue {queue!r}"
        )
        self.queue, self.size_bytes, self.limit_bytes = queue, size_bytes, limit_bytes


class QueueFull(FleetError):
    """The queue's backlog is at `max_backlog`; nothing was written."""

    def __init__(self, queue: str, limit: int) -> None:
        super().__init__(f"queue {queue!r} is full: backlog at its limit of {limit} jobs")
        self.queue, self.limit = queue, limit


class InvalidPayload(FleetError):
    """The payload cannot be encoded (msgpack knows only plain data)."""


class JobFailed(FleetError):
    """The job ran and failed; `error` carries the remote error text."""

    def __init__(self, job_id: str, error: str, attempts: int = 1) -> None:
        super().__init__(f"job {job_id} failed: {error}")
        self.job_id, self.error, self.attempts = job_id, error, attempts


class JobTimeout(FleetError, TimeoutError):
    """No outcome arrived within the caller's timeout."""

    def __init__(self, job_id: str, timeout_s: float) -> None:
        super().__init__(f"job {job_id} has no outcome after {timeout_s:g} s")
        self.job_id, self.timeout_s = job_id, timeout_s


class ConnectionFailed(FleetError):
    """Redis cannot be reached or refused us (auth, TLS, network)."""


class ClientClosed(FleetError):
    """The client was closed while a caller still waited."""


# -- control-flow signals a handler may raise ---------------------------------


class HandlerSignal(Exception):
    """Not an error: a handler's request about one job."""


class Retry(HandlerSignal):
    """Run this job again after `delay_ms` (counts as a delivery)."""

    def __init__(self, delay_ms: int = 0, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay_ms = delay_ms


class Poison(HandlerSignal):
    """This job can never succeed: fail it now, without retries."""


def translate_redis_error(exc: BaseException) -> FleetError:
    """Map a redis-py exception onto a Fleet error, by type never by text."""
    import redis.exceptions as rex

    if isinstance(exc, rex.AuthenticationError | rex.AuthorizationError):
        return ConnectionFailed(f"Redis refused the credentials: {type(exc).__name__}")
    if isinstance(exc, rex.ConnectionError | rex.TimeoutError):
        return ConnectionFailed(f"cannot reach Redis: {exc}")
    if isinstance(exc, rex.NoPermissionError):
        return ConnectionFailed(f"Redis ACL refused the command: {exc}")
    return FleetError(f"Redis error: {exc}")


@contextmanager
def redis_errors() -> Iterator[None]:
    """Re-raise redis-py errors as Fleet errors at a public boundary."""
    import redis.exceptions as rex

    try:
        yield
    except rex.RedisError as exc:
        raise translate_redis_error(exc) from exc


def describe(exc: BaseException) -> str:
    """A one-line, readable description of an exception for a job's error field."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return f"{name}: {text}"[:2000] if text else name


__all__: list[Any] = [
    "ClientClosed",
    "ConfigError",
    "ConnectionFailed",
    "FleetError",
    "InvalidPayload",
    "JobFailed",
    "JobTimeout",
    "PayloadTooLarge",
    "Poison",
    "QueueFull",
    "Retry",
    "UnknownQueue",
]
