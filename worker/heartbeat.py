"""The worker's registry entry and heartbeat, written from a small thread.

The main loop only sets `state` and counters; this thread publishes them every
`interval_s` to ``fleet:workers`` so a hung worker is seen, not only a dead one.
It also wakes the main loop's blocking read when a stop is requested.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from fleet import codec, keys
from worker.stats import WorkerStats, publish_final

log = logging.getLogger("fleet.worker")

STARTING, LOADING, IDLE, BUSY, DRAINING = "starting", "loading", "idle", "busy", "draining"


@dataclass
class WorkerStatus:
    worker_id: str
    queue: str
    device_id: str
    state: str = STARTING
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    last_busy_ms: int | None = None
    load_s: float | None = None
    jobs_done: int = 0
    jobs_failed: int = 0
    busy_since_ms: int | None = None
    held: tuple[str, ...] = ()  # entry IDs read and not yet acknowledged
    stats: WorkerStats = field(default_factory=WorkerStats)  # counters for /metrics (worker.stats)

    def encode(self) -> bytes:
        return codec.pack(
            {
                "queue": self.queue,
                "device": self.device_id,
                "state": self.state,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started_ms": self.started_ms,
                "beat_ms": int(time.time() * 1000),
                "last_busy_ms": self.last_busy_ms,
                "busy_since_ms": self.busy_since_ms,
                "load_s": self.load_s,
                "done": self.jobs_done,
                "failed": self.jobs_failed,
                "stats": self.stats.encode(),
            }
        )


@dataclass
class Chore:
    """Something the heartbeat thread does every `period_s` seconds."""

    name: str
    period_s: float
    action: Callable[[], object]
    next_at: float = 0.0


class Heartbeat(threading.Thread):
    """Beats, extends leases on held entries, runs chores, and wakes the main loop on stop."""

    def __init__(self, conn: redis.Redis, status: WorkerStatus, interval_s: float) -> None:
        super().__init__(name="fleet-heartbeat", daemon=True)
        self.conn, self.status, self.interval_s = conn, status, interval_s
        self.stop_requested = threading.Event()
        self.finished = threading.Event()
        self.unblock_id: int | None = None  # CLIENT ID of the main loop's blocking connection
        self.chores: list[Chore] = []

    def beat(self) -> None:
        self.conn.hset(keys.WORKERS, self.status.worker_id, self.status.encode())

    def run_chores(self, now: float) -> None:
        for chore in self.chores:
            if now < chore.next_at:
                continue
            chore.next_at = now + chore.period_s
            try:
                chore.action()
            except redis.RedisError as exc:
                log.warning("%s failed: %s", chore.name, type(exc).__name__)

    def run(self) -> None:
        woke = False
        while not self.finished.is_set():
            try:
                self.beat()
                if self.stop_requested.is_set() and not woke and self.unblock_id is not None:
                    self.conn.client_unblock(self.unblock_id)
                    woke = True
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", type(exc).__name__)
            self.run_chores(time.monotonic())
            waiting_on = self.finished if self.stop_requested.is_set() else self.stop_requested
            waiting_on.wait(self.interval_s)

    def deregister(self) -> None:
        """Leave the registry; the last counts go to ``fleet:exits`` in the same round trip."""
        self.finished.set()
        with contextlib.suppress(redis.RedisError):
            pipe = self.conn.pipeline(transaction=False)
            publish_final(pipe, self.status.worker_id, self.status.encode())
            pipe.hdel(keys.WORKERS, self.status.worker_id)
            pipe.execute()
