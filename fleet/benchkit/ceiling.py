"""The raw Redis ceiling: what one Python process with redis-py + hiredis gets from
the same redis-server with no Fleet in the way.

The entries carry the fields a Fleet job entry carries (payload, enqueue time,
reply key), so the ceiling and Fleet move the same bytes. The stream is a
benchmark-only key on the benchmark's private server, deleted afterwards.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from fleet import codec
from fleet.benchkit.measure import Rate

CEILING_STREAM = "bench:ceiling"
CEILING_GROUP = "bench"


def _fields(i: int) -> Any:
    return {"p": codec.pack(i), "t": int(time.time() * 1000), "reply": "fleet:reply:{bench}"}


def xadd_rate(conn: redis.Redis, entries: int, pipeline_size: int) -> Rate:
    """Pipelined XADD: `entries` appended in pipelines of `pipeline_size`."""
    conn.delete(CEILING_STREAM)
    started = time.perf_counter()
    for start in range(0, entries, pipeline_size):
        pipe = conn.pipeline(transaction=False)
        for i in range(start, min(entries, start + pipeline_size)):
            pipe.xadd(CEILING_STREAM, _fields(i))
        pipe.execute()
    return Rate(entries, time.perf_counter() - started)


def xreadgroup_rate(conn: redis.Redis, count: int) -> Rate:
    """XREADGROUP COUNT `count` then XACK of what was read, until the stream is drained."""
    conn.xgroup_create(CEILING_STREAM, CEILING_GROUP, id="0")
    done = 0
    started = time.perf_counter()
    while True:
        resp: Any = conn.xreadgroup(CEILING_GROUP, "c", {CEILING_STREAM: ">"}, count=count)
        if not resp or not resp[0][1]:
            break
        ids = [entry_id for entry_id, _fields in resp[0][1]]
        conn.xack(CEILING_STREAM, CEILING_GROUP, *ids)
        done += len(ids)
    rate = Rate(done, time.perf_counter() - started)
    conn.delete(CEILING_STREAM)
    return rate
