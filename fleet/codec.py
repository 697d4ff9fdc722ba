"""Encoding of payloads, outcomes and job entries. msgpack only: never pickle.

A payload is plain data (None, bool, int, float, str, bytes, lists, maps).
Decoding treats every byte as hostile: a stream entry Fleet did not write
fails that entry alone with a readable reason, it never raises out of here
as anything but `DecodeError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import msgpack

from fleet import keys
from fleet.errors import InvalidPayload

_STREAM_ID_RE = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")
MAX_FIELD_BYTES = 64 * 1024 * 1024  # hard ceiling on any one field we decode

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_DEAD = "dead"
FINAL_STATUSES = frozenset({STATUS_OK, STATUS_FAILED, STATUS_DEAD})


class DecodeError(ValueError):
    """A stream entry or payload that is not what Fleet writes."""


def pack(value: Any) -> bytes:
    """Encode plain data; anything else is an InvalidPayload at the boundary."""
    try:
        return msgpack.packb(value, use_bin_type=True, strict_types=False)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidPayload(f"payload is not plain data msgpack can encode: {exc}") from exc


def unpack(data: bytes, max_bytes: int = MAX_FIELD_BYTES) -> Any:
    """Decode msgpack bytes with bounded sizes; raise DecodeError on anything else."""
    if len(data) > max_bytes:
        raise DecodeError(f"field of {len(data)} bytes is over the {max_bytes}-byte limit")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise DecodeError(f"payload is not valid msgpack: {type(exc).__name__}") from exc
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise DecodeError(f"payload is not valid msgpack: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Job:
    """One decoded job entry. `id` is the job's ID for its whole life (the first
    entry's ID); `entry_id` is this delivery's stream entry (differs after a retry)."""

    id: str
    entry_id: str
    payload: Any
    enqueued_ms: int
    reply: str | None = None
    deadline_ms: int | None = None
    idempotency_key: str | None = None
    prior_attempts: int = 0
    history: tuple[str, ...] = ()


def _int_field(fields: dict[bytes, bytes], name: str, default: int | None) -> int | None:
    raw = fields.get(name.encode())
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise DecodeError(f"field {name!r} is not an integer") from exc
    if value < 0 or value > 2**63:
        raise DecodeError(f"field {name!r} is out of range")
    return value


def _text_field(fields: dict[bytes, bytes], name: str, limit: int = 256) -> str | None:
    raw = fields.get(name.encode())
    if raw is None:
        return None
    if len(raw) > limit:
        raise DecodeError(f"field {name!r} is longer than {limit} bytes")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"field {name!r} is not ASCII") from exc


def _history(fields: dict[bytes, bytes]) -> tuple[str, ...]:
    raw = fields.get(keys.F_HISTORY.encode())
    if raw is None:
        return ()
    value = unpack(raw, 1024 * 1024)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DecodeError("field 'h' is not a list of strings")
    return tuple(value)


def decode_job(
    entry_id: bytes | str, fields: dict[bytes, bytes], max_payload_bytes: int
) -> Job:
    """Decode one job entry; DecodeError names what is wrong with it."""
    job_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    if not isinstance(fields, dict):
        raise DecodeError("entry has no fields")
    unknown = [k for k in fields if not isinstance(k, bytes) or k.decode("latin-1") not in keys.JOB_FIELDS]
    if unknown:
        raise DecodeError(f"entry has fields Fleet does not write: {sorted(map(repr, unknown))[:5]}")
    raw = fields.get(keys.F_PAYLOAD.encode())
    if raw is None:
        raise DecodeError("entry has no payload field 'p'")
    reply = _text_field(fields, keys.F_REPLY)
    if reply is not None and not keys.is_reply_key(reply):
        raise DecodeError("field 'reply' is not a Fleet reply stream key")
    origin = _text_field(fields, keys.F_ORIGIN, 64)
    if origin is not None and not _STREAM_ID_RE.match(origin):
        raise DecodeError("field 'o' is not a stream entry ID")
    return Job(
        id=origin or job_id,
        entry_id=job_id,
        payload=unpack(raw, max_payload_bytes),
        enqueued_ms=_int_field(fields, keys.F_ENQUEUED_MS, 0) or 0,
        reply=reply,
        deadline_ms=_int_field(fields, keys.F_DEADLINE_MS, None),
        idempotency_key=_text_field(fields, keys.F_IDEMPOTENCY_KEY, 200),
        prior_attempts=_int_field(fields, keys.F_ATTEMPTS, 0) or 0,
        history=_history(fields),
    )


def safe_reply_key(fields: dict[bytes, bytes]) -> str | None:
    """The reply key of an entry that failed to decode, if it is a valid one."""
    try:
        reply = _text_field(fields, keys.F_REPLY)
    except DecodeError:
        return None
    return reply if reply is not None and keys.is_reply_key(reply) else None


@dataclass(frozen=True, slots=True)
class Outcome:
    """The final (or retry) outcome of one job, as stored and replied."""

    status: str
    value: Any = None
    error: str | None = None
    attempts: int = 1
    worker: str = ""
    history: tuple[str, ...] = field(default_factory=tuple)

    def encode(self) -> bytes:
        return pack(
            {
                "s": self.status,
                "v": self.value,
                "e": self.error,
                "a": self.attempts,
                "w": self.worker,
                "h": list(self.history),
            }
        )


def decode_outcome(data: bytes) -> Outcome:
    raw = unpack(data)
    if not isinstance(raw, dict) or not isinstance(raw.get("s"), str) or raw["s"] not in FINAL_STATUSES:
        raise DecodeError("not a Fleet outcome")
    attempts, error, history = raw.get("a") or 1, raw.get("e"), raw.get("h") or []
    if not isinstance(attempts, int) or not (error is None or isinstance(error, str)):
        raise DecodeError("outcome has a malformed attempts or error field")
    return Outcome(
        status=raw["s"],
        value=raw.get("v"),
        error=error,
        attempts=attempts,
        worker=str(raw.get("w") or ""),
        history=tuple(str(h) for h in history) if isinstance(history, list) else (),
    )


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """What a client needs to know about a queue, published in ``fleet:queues``."""

    name: str
    handler: str
    max_payload_bytes: int
    max_backlog: int
    result_ttl_s: int

    def encode(self) -> bytes:
        return pack(
            {
                "handler": self.handler,
                "max_payload_bytes": self.max_payload_bytes,
                "max_backlog": self.max_backlog,
                "result_ttl_s": self.result_ttl_s,
            }
        )

    @classmethod
    def decode(cls, name: str, data: bytes) -> QueueInfo:
        raw = unpack(data)
        if not isinstance(raw, dict):
            raise DecodeError(f"queue info for {name!r} is not a map")
        try:
            return cls(
                name=name,
                handler=str(raw["handler"]),
                max_payload_bytes=int(raw["max_payload_bytes"]),
                max_backlog=int(raw["max_backlog"]),
                result_ttl_s=int(raw["result_ttl_s"]),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise DecodeError(f"queue info for {name!r} is malformed: {exc}") from exc
