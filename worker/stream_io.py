"""The worker's Redis edge: the group, batched reads, and one pipelined write per batch."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from fleet import codec, keys
from worker import retry
from worker.execute import Work

log = logging.getLogger("fleet.worker")

Entries = list[tuple[bytes, dict[bytes, bytes]]]
_P = keys.F_PAYLOAD.encode()


def ensure_group(conn: redis.Redis, queue: str) -> bool:
    """Create the consumer group (and stream) if missing; True when it was created."""
    try:
        conn.xgroup_create(keys.jobs(queue), keys.GROUP, id="0", mkstream=True)
        return True
    except redis.ResponseError:
        groups = conn.xinfo_groups(keys.jobs(queue))
        names = {g["name"].decode() if isinstance(g["name"], bytes) else g["name"] for g in groups}
        if keys.GROUP not in names:
            raise
        return False


def _read(conn: redis.Redis, queue: str, consumer: str, count: int, block_ms: int) -> Entries:
    resp = conn.xreadgroup(keys.GROUP, consumer, {keys.jobs(queue): ">"}, count=count, block=block_ms)
    if not resp:
        return []
    return resp[0][1]  # type: ignore[no-any-return]


def read_batch(
    conn: redis.Redis,
    queue: str,
    consumer: str,
    *,
    max_batch: int,
    max_delay_ms: int,
    block_ms: int,
    stopping: Callable[[], bool],
    hold: Callable[[Entries], None] = lambda entries: None,
) -> Entries:
    """XREADGROUP BLOCK for the first entries, then top up for at most max_delay_ms.

    `hold` hears of every entry as soon as it is read, so its lease is kept
    fresh while it waits in the batch buffer.
    """
    batch = _read(conn, queue, consumer, max_batch, block_ms)
    if not batch or max_delay_ms <= 0 or len(batch) >= max_batch:
        return batch
    hold(batch)
    deadline = time.monotonic() + max_delay_ms / 1000
    while len(batch) < max_batch and not stopping():
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            break
        more = _read(conn, queue, consumer, max_batch - len(batch), left_ms)
        if not more:
            break
        batch.extend(more)
        hold(batch)
    return batch


@dataclass(frozen=True)
class OutcomePolicy:
    result_ttl_s: int
    reply_ttl_s: int
    max_deliveries: int
    retry_backoff_ms: int
    dlq_max_len: int


def _final(pipe: Any, queue: str, work: Work, outcome: codec.Outcome, ttl_s: int) -> str | None:
    encoded = outcome.encode()
    pipe.set(keys.result(queue, work.job_id), encoded, ex=ttl_s, nx=True)
    if work.reply is None:
        return None
    pipe.xadd(work.reply, {keys.R_JOB_ID: work.job_id, keys.R_OUTCOME: encoded})
    return work.reply


def _dead_letter(pipe: Any, queue: str, work: Work, outcome: codec.Outcome, max_len: int) -> None:
    fields: dict[Any, Any] = {k: v for k, v in work.fields.items() if k != keys.F_HISTORY.encode()}
    fields.update({
        "id": work.job_id,
        "error": outcome.error or "",
        "attempts": outcome.attempts,
        "worker": outcome.worker,
        "history": codec.pack(list(outcome.history)),
        "dead_ms": int(time.time() * 1000),
    })
    pipe.xadd(keys.dlq(queue), fields, maxlen=max_len, approximate=True)


def write_outcomes(conn: redis.Redis, queue: str, batch: Sequence[Work], policy: OutcomePolicy) -> None:
    """Results, replies, retries, dead letters and acks for the batch in one round trip.

    One MULTI/EXEC: the acks land only with the outcomes. A command Redis refuses
    when it is queued (out of memory, read-only replica) aborts the whole
    transaction, so nothing is acknowledged without its outcome and the caller
    retries. An error of one command at run time (a reply key that is not a
    stream) costs only that command: it is logged, the rest stands.
    The result is written only if none exists (SET NX): a job run twice after a
    reclaim race keeps exactly one final outcome.
    """
    pipe = conn.pipeline(transaction=True)
    replies: set[str | None] = set()
    now_ms = int(time.time() * 1000)
    for work in batch:
        outcome = work.outcome
        assert outcome is not None
        failed = outcome.status != codec.STATUS_OK
        what = retry.disposition(failed, work.retryable, work.attempts, policy.max_deliveries)
        if what == retry.RETRY and work.job is not None:
            delay = retry.backoff_ms(work.attempts, policy.retry_backoff_ms)
            member = retry.retry_member(work.job, work.fields[_P], work.attempts, outcome.history,
                                        work.entry_id)
            pipe.zadd(keys.delayed(queue), {member: retry.due_score(now_ms, delay)})
            continue
        if what == retry.DEAD:
            outcome = dataclasses.replace(outcome, status=codec.STATUS_DEAD)
            _dead_letter(pipe, queue, work, outcome, policy.dlq_max_len)
        replies.add(_final(pipe, queue, work, outcome, policy.result_ttl_s))
    for reply in replies - {None}:
        pipe.expire(reply, policy.reply_ttl_s)  # type: ignore[arg-type]
    pipe.xack(keys.jobs(queue), keys.GROUP, *[w.entry_id for w in batch])
    results = pipe.execute(raise_on_error=False)
    failures = [r for r in results if isinstance(r, Exception)]
    if failures:
        log.error("queue %s: %d of %d writes of a batch were refused (first: %s); the rest stand",
                  queue, len(failures), len(results), failures[0])


def delete_consumer_if_idle(conn: redis.Redis, queue: str, consumer: str) -> bool:
    """Remove this consumer from the group when it holds nothing pending."""
    pending = conn.xpending_range(keys.jobs(queue), keys.GROUP, "-", "+", 1, consumername=consumer)
    if pending:
        return False
    conn.xgroup_delconsumer(keys.jobs(queue), keys.GROUP, consumer)
    return True
