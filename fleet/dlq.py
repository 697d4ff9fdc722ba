"""Dead letters: read, replay and purge a queue's dead-letter stream.

A dead letter holds the job's original fields plus ``id`` (the job ID),
``error``, ``attempts``, ``worker``, ``history`` (msgpack list) and ``dead_ms``.
Replaying appends the job again under its original ID (field ``o``) with a fresh
delivery count and clears its dead outcome, so the caller can wait on it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import redis

from fleet import codec, keys

REPLAY_FIELDS = (keys.F_PAYLOAD, keys.F_ENQUEUED_MS, keys.F_REPLY, keys.F_DEADLINE_MS)


@dataclass(frozen=True)
class DeadLetter:
    entry_id: str
    job_id: str
    error: str
    attempts: int
    worker: str
    history: tuple[str, ...]
    dead_ms: int
    payload: Any
    fields: dict[bytes, bytes]


def _text(fields: dict[bytes, bytes], name: str, default: str = "") -> str:
    raw = fields.get(name.encode())
    return raw.decode("utf-8", "replace") if raw is not None else default


def parse(entry_id: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    try:
        history = codec.unpack(fields.get(b"history", codec.pack([])))
        payload = codec.unpack(fields.get(keys.F_PAYLOAD.encode(), codec.pack(None)))
    except codec.DecodeError:
        history, payload = [], "<undecodable>"
    return DeadLetter(
        entry_id=entry_id.decode(),
        job_id=_text(fields, "id", entry_id.decode()),
        error=_text(fields, "error"),
        attempts=int(_text(fields, "attempts", "0") or 0),
        worker=_text(fields, "worker"),
        history=tuple(str(h) for h in history) if isinstance(history, list) else (),
        dead_ms=int(_text(fields, "dead_ms", "0") or 0),
        payload=payload,
        fields=fields,
    )


def _entries(conn: redis.Redis, queue: str, count: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
    return cast(list[tuple[bytes, dict[bytes, bytes]]], conn.xrevrange(keys.dlq(queue), count=count))


def list_dead(conn: redis.Redis, queue: str, count: int = 100) -> list[DeadLetter]:
    return [parse(eid, f) for eid, f in _entries(conn, queue, count)]


def find(conn: redis.Redis, queue: str, job_id: str) -> DeadLetter | None:
    """The dead letter of a job, by job ID (scans the DLQ newest first)."""
    for eid, fields in _entries(conn, queue, 100_000):
        if fields.get(b"id", eid) == job_id.encode():
            return parse(eid, fields)
    return None


def replay(conn: redis.Redis, queue: str, letters: list[DeadLetter]) -> int:
    """Put dead jobs back on the queue under their original IDs (one round trip)."""
    pipe = conn.pipeline(transaction=False)
    for letter in letters:
        fields: dict[Any, Any] = {
            k: letter.fields[k.encode()] for k in REPLAY_FIELDS if k.encode() in letter.fields
        }
        fields[keys.F_ORIGIN] = letter.job_id
        pipe.delete(keys.result(queue, letter.job_id))
        pipe.xadd(keys.jobs(queue), fields)
        pipe.xdel(keys.dlq(queue), letter.entry_id)
    pipe.execute()
    return len(letters)


def purge(conn: redis.Redis, queue: str) -> int:
    removed = int(conn.xlen(keys.dlq(queue)))
    conn.delete(keys.dlq(queue))
    return removed
