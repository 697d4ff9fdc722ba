"""The worker's Redis edge: the group and batched reads (the per-batch write is
`worker.outcome_script`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import cast

import redis

from fleet import keys

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
    return cast(Entries, resp[0][1])  # type: ignore[index]


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


def delete_consumer_if_idle(conn: redis.Redis, queue: str, consumer: str) -> bool:
    """Remove this consumer from the group when it holds nothing pending."""
    pending = conn.xpending_range(keys.jobs(queue), keys.GROUP, "-", "+", 1, consumername=consumer)
    if pending:
        return False
    conn.xgroup_delconsumer(keys.jobs(queue), keys.GROUP, consumer)
    return True
