"""Reclaiming work that a dead or hung worker left pending, and keeping our own
entries fresh while a long batch runs.

`Reclaimer` walks the whole pending list with XAUTOCLAIM over successive calls
(a cursor), then rests for an interval: no spinning when there is nothing to
claim. Entries whose data was deleted or trimmed are dropped from the pending
list by Redis and counted here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import redis

from fleet import keys

log = logging.getLogger("fleet.worker")

Entries = list[tuple[bytes, dict[bytes, bytes]]]


class Reclaimer:
    def __init__(self, queue: str, consumer: str, min_idle_ms: int, count: int) -> None:
        self.queue, self.consumer = queue, consumer
        self.min_idle_ms, self.count = min_idle_ms, count
        self.interval_s = max(0.05, min(min_idle_ms / 2000, 5.0))
        self.cursor: bytes | str = "0-0"
        self.next_at = 0.0
        self.deleted = 0
        self.reclaimed = 0

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def reclaim(self, conn: redis.Redis) -> tuple[Entries, dict[str, int]]:
        """Claim one page of stale entries; their delivery counts by entry ID."""
        cursor, claimed, deleted = self._claim_page(conn)
        if deleted:
            self.deleted += len(deleted)
            log.warning("queue %s: %d pending entries had been deleted or trimmed; cleared",
                        self.queue, len(deleted))
        if cursor in (b"0-0", "0-0"):
            self.cursor, self.next_at = "0-0", time.monotonic() + self.interval_s
        else:
            self.cursor = cursor
        claimed = [(eid, fields) for eid, fields in claimed if fields]
        if not claimed:
            return [], {}
        self.reclaimed += len(claimed)
        return claimed, self.delivery_counts(conn, [eid for eid, _ in claimed])

    def _claim_page(self, conn: redis.Redis) -> tuple[bytes | str, Entries, list[bytes]]:
        resp = conn.xautoclaim(
            keys.jobs(self.queue), keys.GROUP, self.consumer,
            min_idle_time=self.min_idle_ms, start_id=self.cursor, count=self.count,
        )
        return resp[0], resp[1], (resp[2] if len(resp) > 2 else [])

    def delivery_counts(self, conn: redis.Redis, entry_ids: list[bytes]) -> dict[str, int]:
        ordered = sorted(entry_ids, key=lambda e: tuple(int(p) for p in e.split(b"-")))
        rows = conn.xpending_range(
            keys.jobs(self.queue), keys.GROUP, ordered[0], ordered[-1], len(ordered) * 4,
            consumername=self.consumer,
        )
        wanted = {e.decode() for e in entry_ids}
        counts = {}
        for row in rows:
            eid = _text(row["message_id"])
            if eid in wanted:
                counts[eid] = int(row["times_delivered"])
        return counts


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def extend_leases(conn: redis.Redis, queue: str, consumer: str, entry_ids: Iterable[str]) -> int:
    """Reset the idle time of entries we hold (XCLAIM JUSTID does not count a delivery)."""
    ids = list(entry_ids)
    if not ids:
        return 0
    claimed = conn.xclaim(keys.jobs(queue), keys.GROUP, consumer, 0, list[Any](ids), justid=True)
    return len(claimed)
