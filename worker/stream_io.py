"""The worker's Redis edge: the group, batched reads, and one pipelined write per batch."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import redis

from fleet import keys
from worker.execute import Work

log = logging.getLogger("fleet.worker")

Entries = list[tuple[bytes, dict[bytes, bytes]]]


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
) -> Entries:
    """XREADGROUP BLOCK for the first entries, then top up for at most max_delay_ms."""
    batch = _read(conn, queue, consumer, max_batch, block_ms)
    if not batch or max_delay_ms <= 0 or len(batch) >= max_batch:
        return batch
    deadline = time.monotonic() + max_delay_ms / 1000
    while len(batch) < max_batch and not stopping():
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            break
        more = _read(conn, queue, consumer, max_batch - len(batch), left_ms)
        if not more:
            break
        batch.extend(more)
    return batch


def write_outcomes(
    conn: redis.Redis,
    queue: str,
    batch: Sequence[Work],
    *,
    result_ttl_s: int,
    reply_ttl_s: int,
) -> None:
    """Results, replies and acks for the whole batch in one round trip.

    The result is written only if none exists (SET NX): a job run twice after a
    reclaim race keeps exactly one final outcome.
    """
    pipe = conn.pipeline(transaction=False)
    replies: set[str] = set()
    for work in batch:
        assert work.outcome is not None
        encoded = work.outcome.encode()
        pipe.set(keys.result(queue, work.job_id), encoded, ex=result_ttl_s, nx=True)
        if work.reply is not None:
            pipe.xadd(work.reply, {keys.R_JOB_ID: work.job_id, keys.R_OUTCOME: encoded})
            replies.add(work.reply)
    for reply in replies:
        pipe.expire(reply, reply_ttl_s)
    pipe.xack(keys.jobs(queue), keys.GROUP, *[w.entry_id for w in batch])
    pipe.execute()


def delete_consumer_if_idle(conn: redis.Redis, queue: str, consumer: str) -> bool:
    """Remove this consumer from the group when it holds nothing pending."""
    pending = conn.xpending_range(keys.jobs(queue), keys.GROUP, "-", "+", 1, consumername=consumer)
    if pending:
        return False
    conn.xgroup_delconsumer(keys.jobs(queue), keys.GROUP, consumer)
    return True
