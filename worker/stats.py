"""The worker's own counters: jobs by outcome and the batch/job histograms.

Plain Python, one lock taken once per batch. The heartbeat thread publishes
`WorkerStats.encode()` in the worker's registry entry; on a clean exit
`publish_final` appends the last counts to ``fleet:exits`` in the same round
trip that removes the entry, so the scaler's totals lose nothing between the last
beat and the exit. Wire format and bucket bounds: `fleet.telemetry`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from fleet import codec, keys, telemetry
from worker import retry
from worker.execute import Work

EXITS_MAX_LEN = 10_000  # the scaler reads fleet:exits every tick; this is slack, not history

_OUTCOME = {retry.RETRY: telemetry.RETRY, retry.DEAD: telemetry.DEAD}


def outcome_of(work: Work, max_deliveries: int) -> str:
    """ok / failed / retry / dead: what `outcome_script.OutcomeWriter` did with this delivery."""
    assert work.outcome is not None
    failed = work.outcome.status != codec.STATUS_OK
    what = retry.disposition(failed, work.retryable, work.attempts, max_deliveries)
    return _OUTCOME.get(what, telemetry.FAILED if failed else telemetry.OK)


class WorkerStats:
    """Cumulative since the worker started; never reset (the scaler relies on that)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals = telemetry.Totals()
        self.in_flight = 0

    def begin_batch(self, size: int) -> None:
        self.in_flight = size

    def record_batch(
        self,
        batch: Sequence[Work],
        *,
        max_batch: int,
        max_deliveries: int,
        read_ms: int,
        done_ms: int,
        inference_s: float,
    ) -> None:
        """One batch: its outcomes, size, fill, handler time, and each job's wait and latency."""
        outcomes = [outcome_of(w, max_deliveries) for w in batch]
        enqueued = [w.job.enqueued_ms for w in batch if w.job is not None and w.job.enqueued_ms > 0]
        with self._lock:
            t = self._totals
            for outcome in outcomes:
                t.jobs[outcome] += 1
            t.observe("batch_size", len(batch))
            t.observe("batch_fill", len(batch) / max_batch)
            t.observe("inference_s", inference_s)
            t.observe_many("queue_wait_s", (max(0, read_ms - ms) / 1000 for ms in enqueued))
            t.observe_many("latency_s", (max(0, done_ms - ms) / 1000 for ms in enqueued))
            self.in_flight = 0

    def totals(self) -> telemetry.Totals:
        with self._lock:
            return self._totals.copy()

    def encode(self) -> dict[str, Any]:
        with self._lock:
            return telemetry.encode(self._totals, self.in_flight)


def publish_final(pipe: Any, worker_id: str, entry: bytes) -> None:
    """Queue the worker's last registry entry (stats included) on ``fleet:exits``."""
    pipe.xadd(keys.EXITS, {keys.X_WORKER_ID: worker_id, keys.X_ENTRY: entry},
              maxlen=EXITS_MAX_LEN, approximate=True)
