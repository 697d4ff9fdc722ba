"""Turn a batch of stream entries into outcomes by running the handler.

No Redis here. Every entry ends with exactly one outcome: a payload that does
not decode or validate fails alone; a handler exception on a batch is narrowed
by running the batch's items one at a time, so only the guilty job fails.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleet import codec
from fleet.errors import Poison, describe
from worker.handlers.base import Handler, JobError

log = logging.getLogger("fleet.worker")


@dataclass(slots=True)
class Work:
    """One entry of the batch and, once known, its outcome."""

    entry_id: str
    job_id: str
    reply: str | None
    job: codec.Job | None
    attempts: int
    fields: dict[bytes, bytes]
    outcome: codec.Outcome | None = None
    retryable: bool = False  # the handler raised: another delivery may succeed


def decode_entries(
    entries: list[tuple[bytes, dict[bytes, bytes]]],
    max_payload_bytes: int,
    worker_id: str,
    deliveries: Mapping[str, int] | None = None,
) -> list[Work]:
    """Decode a batch; `deliveries` holds the delivery counts of reclaimed entries."""
    batch = []
    for entry_id, fields in entries:
        eid = entry_id.decode()
        delivered = (deliveries or {}).get(eid, 1)
        try:
            job = codec.decode_job(eid, fields, max_payload_bytes)
        except codec.DecodeError as exc:
            reply = codec.safe_reply_key(fields) if isinstance(fields, dict) else None
            failed = codec.Outcome(codec.STATUS_FAILED, error=f"malformed job: {exc}", worker=worker_id)
            batch.append(Work(eid, eid, reply, None, delivered, {}, failed))
            continue
        batch.append(Work(eid, job.id, job.reply, job, job.prior_attempts + delivered, fields))
    return batch


def _fail(work: Work, error: str, worker_id: str, retryable: bool = False) -> None:
    history = (*work.job.history, error) if work.job is not None else (error,)
    work.outcome = codec.Outcome(
        codec.STATUS_FAILED, error=error, attempts=work.attempts, worker=worker_id, history=history
    )
    work.retryable = retryable


def fail_exhausted(batch: list[Work], max_deliveries: int, worker_id: str) -> None:
    """Entries delivered more often than allowed (they killed their workers): dead now."""
    for work in batch:
        if work.outcome is None and work.attempts > max_deliveries:
            _fail(work, f"delivered {work.attempts} times without an outcome "
                        "(its worker died or hung each time)", worker_id, retryable=True)


def _validate(handler: Handler, work: Work, now_ms: int, worker_id: str) -> Any:
    assert work.job is not None
    if work.job.deadline_ms is not None and now_ms > work.job.deadline_ms:
        _fail(work, "deadline passed before the job ran", worker_id)
        return None
    try:
        return handler.validate(work.job.payload)
    except Exception as exc:
        _fail(work, f"invalid payload: {describe(exc)}", worker_id)
        return None


def _record(works: list[Work], results: list[Any], worker_id: str) -> None:
    for work, value in zip(works, results, strict=True):
        if isinstance(value, JobError):
            _fail(work, value.message, worker_id)
        else:
            work.outcome = codec.Outcome(
                codec.STATUS_OK, value=value, attempts=work.attempts, worker=worker_id
            )


def _run_checked(handler: Handler, items: list[Any], n: int) -> list[Any]:
    results = handler.run(items)
    if not isinstance(results, list) or len(results) != n:
        raise TypeError(f"handler returned {type(results).__name__} of the wrong length for {n} items")
    return results


def run_batch(handler: Handler, batch: list[Work], worker_id: str) -> int:
    """Fill in every outcome; returns how many items reached the handler."""
    now_ms = int(time.time() * 1000)
    todo: list[Work] = []
    items: list[Any] = []
    for work in batch:
        if work.outcome is not None:
            continue
        item = _validate(handler, work, now_ms, worker_id)
        if work.outcome is None:
            todo.append(work)
            items.append(item)
    if not todo:
        return 0
    try:
        _record(todo, _run_checked(handler, items, len(items)), worker_id)
    except Poison as exc:
        for work in todo:
            _fail(work, describe(exc), worker_id)
    except Exception as exc:
        if len(todo) == 1:
            _fail(todo[0], describe(exc), worker_id, retryable=True)
        else:
            log.warning("batch of %d failed (%s); running its items one by one", len(todo), describe(exc))
            for work, item in zip(todo, items, strict=True):
                run_one(handler, work, item, worker_id)
    return len(todo)


def run_one(handler: Handler, work: Work, item: Any, worker_id: str) -> None:
    try:
        _record([work], _run_checked(handler, [item], 1), worker_id)
    except Poison as exc:
        _fail(work, describe(exc), worker_id)
    except Exception as exc:
        _fail(work, describe(exc), worker_id, retryable=True)
