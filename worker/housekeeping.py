"""Chores a worker does on the side: move due retries back into the stream, trim
the stream below what the group has delivered and acknowledged, and delete the
consumers of dead workers once their pending lists are empty."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from fleet import keys
from fleet.jobstate import compare_ids
from worker.retry import MOVE_DUE_LUA

log = logging.getLogger("fleet.worker")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def safe_trim_id(groups: list[dict[str, Any]], oldest_pending: str | None) -> str | None:
    """The lowest ID still needed by any group: nothing pending, nothing undelivered
    is ever below it. None when there is no group (then never trim)."""
    if not groups:
        return None
    floor = min((_text(g["last-delivered-id"]) for g in groups), key=_id_key)
    if oldest_pending is not None and compare_ids(oldest_pending, floor) < 0:
        floor = oldest_pending
    return None if floor == "0-0" else floor


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Chores:
    def __init__(self, conn: redis.Redis, queue: str) -> None:
        self.conn, self.queue = conn, queue
        self.mover = conn.register_script(MOVE_DUE_LUA)
        self.trimmed = 0
        self.consumers_deleted = 0

    def move_due_retries(self, limit: int = 500) -> int:
        moved = self.mover(keys=[keys.delayed(self.queue), keys.jobs(self.queue)],
                           args=[int(time.time() * 1000), limit])
        return int(moved)

    def trim(self) -> int:
        jobs = keys.jobs(self.queue)
        pipe = self.conn.pipeline(transaction=False)
        pipe.xinfo_groups(jobs)
        pipe.xpending(jobs, keys.GROUP)
        groups, pending = pipe.execute(raise_on_error=False)
        if isinstance(groups, Exception) or isinstance(pending, Exception):
            return 0
        oldest = _text(pending["min"]) if pending and pending.get("pending") else None
        floor = safe_trim_id(groups, oldest)
        if floor is None:
            return 0
        removed = int(self.conn.xtrim(jobs, minid=floor, approximate=True))
        self.trimmed += removed
        return removed

    def reap_consumers(self, min_idle_ms: int) -> int:
        """Delete consumers that hold nothing, are idle, and belong to no live worker."""
        jobs = keys.jobs(self.queue)
        try:
            consumers = self.conn.xinfo_consumers(jobs, keys.GROUP)
        except redis.ResponseError:
            return 0
        live = {_text(w) for w in self.conn.hkeys(keys.WORKERS)}
        deleted = 0
        for c in consumers:
            name = _text(c["name"])
            if c["pending"] == 0 and c["idle"] > min_idle_ms and name not in live:
                self.conn.xgroup_delconsumer(jobs, keys.GROUP, name)
                deleted += 1
        self.consumers_deleted += deleted
        return deleted
