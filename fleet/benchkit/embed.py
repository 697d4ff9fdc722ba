"""The embedding job through the fleet against the same model called in-process.

Both sides use the same batch size: the queue's `max_batch` for the worker, and
chunks of that size for the direct call (output turned into lists, as the worker
does). The batch fill the worker achieved is
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


@dataclass(frozen=True)
class EmbedRates:
    fleet: Rate
    direct: Rate
    fill: BatchFill


def compare(
    client: Client, conn: redis.Redis, queue: str, sentences: list[str], batch: int, rounds: int = 5
) -> EmbedRates:
    """Fleet and direct in alternating rounds over the same sentences, so a change in
    the host's background load lands on both sides alike."""
    from worker.handlers.embed import MiniLM

    model = MiniLM("cpu")
    model.encode(sentences[:batch]).tolist()  # warm both sides: first batch, listener
    client.map(queue, sentences[:batch], timeout_s=WAIT_S)
    per_round = batch * -(-len(sentences) // (rounds * batch))  # whole batches per round
    fleet_s = direct_s = 0.0
    batches = 0
    for start in range(0, len(sentences), per_round):
        chunk = sentences[start : start + per_round]
        acks, began = xack_calls(conn), time.perf_counter()
        vectors = client.map(queue, chunk, timeout_s=WAIT_S)
        fleet_s += time.perf_counter() - began
        batches += xack_calls(conn) - acks
        if len(vectors) != len(chunk) or len(vectors[0]) != 384:
            raise FleetError("the embed queue returned the wrong number or shape of vectors")
        began = time.perf_counter()
        for at in range(0, len(chunk), batch):
            model.encode(chunk[at : at + batch]).tolist()
        direct_s += time.perf_counter() - began
    n = len(sentences)
    return EmbedRates(Rate(n, fleet_s), Rate(n, direct_s), BatchFill(n, batches, batch))
