"""The embedding job through the fleet against the same model called in-process.

Both sides use the same batch size: the queue's `max_batch` for the worker, and
chunks of that size for the direct call. The batch fill the worker achieved is
read from Redis: every batch ends with exactly one XACK, so
mean batch = jobs / XACK calls over the run (INFO commandstats).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from fleet.benchkit.measure import Rate
from fleet.client import Client
from fleet.errors import FleetError

WAIT_S = 600.0


@dataclass(frozen=True)
class BatchFill:
    jobs: int
    batches: int
    max_batch: int

    @property
    def mean_batch(self) -> float:
        return self.jobs / self.batches if self.batches else 0.0

    @property
    def fill(self) -> float:
        return self.mean_batch / self.max_batch


def xack_calls(conn: redis.Redis) -> int:
    stats = conn.info("commandstats")
    return int(stats.get("cmdstat_xack", {}).get("calls", 0))


def fleet_rate(
    client: Client, conn: redis.Redis, queue: str, sentences: list[str], max_batch: int
) -> tuple[Rate, BatchFill]:
    client.map(queue, sentences[:max_batch], timeout_s=WAIT_S)  # warm: first batch, listener
    acks_before = xack_calls(conn)
    started = time.perf_counter()
    vectors = client.map(queue, sentences, timeout_s=WAIT_S)
    wall_s = time.perf_counter() - started
    batches = xack_calls(conn) - acks_before
    if len(vectors) != len(sentences) or len(vectors[0]) != 384:
        raise FleetError("the embed queue returned the wrong number or shape of vectors")
    return Rate(len(sentences), wall_s), BatchFill(len(sentences), batches, max_batch)


def direct_rate(sentences: list[str], batch: int) -> Rate:
    """MiniLM in this process, `batch` sentences per call, output to lists as the worker does."""
    from worker.handlers.embed import MiniLM

    model = MiniLM("cpu")
    model.encode(sentences[:batch]).tolist()  # warm
    started = time.perf_counter()
    for start in range(0, len(sentences), batch):
        model.encode(sentences[start : start + batch]).tolist()
    return Rate(len(sentences), time.perf_counter() - started)
