"""The worker process: pin, load the model once, then read → batch → run → write → ack.

SIGTERM/SIGINT drain: the handler only records the signal (and the heartbeat
thread wakes the blocking read); the loop finishes its batch, writes and acks it,
deregisters and exits 0.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from types import FrameType

import redis

from fleet import codec, keys
from fleet.connection import connect, is_transient
from fleet.errors import ConnectionFailed, describe
from fleet.settings import QueueSettings
from fleet.workerspec import WorkerSpec
from worker import stream_io
from worker.execute import Work, decode_entries, fail_exhausted, run_batch
from worker.handlers.base import Handler, HandlerContext, load_handler
from worker.heartbeat import BUSY, DRAINING, IDLE, LOADING, Chore, Heartbeat, WorkerStatus
from worker.housekeeping import Chores
from worker.outcome_script import OutcomePolicy, OutcomeWriter
from worker.reclaim import Reclaimer, extend_leases
from worker.writebehind import WriteBehind

log = logging.getLogger("fleet.worker")
EXIT_REDIS_REFUSED = 4
# refusals that pass: memory freed, a replica promoted, a dataset loaded
TRANSIENT_REFUSALS = (
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ExecAbortError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
)


class FatalRedisError(ConnectionFailed):
    """Redis refused us in a way retrying cannot fix (credentials, ACL, TLS)."""


def publish_queue(conn: redis.Redis, name: str, q: QueueSettings) -> None:
    info = codec.QueueInfo(name, q.handler, q.max_payload_bytes, q.max_backlog, q.result_ttl_s)
    conn.hset(keys.QUEUES, name, info.encode())


class Worker:
    def __init__(self, spec: WorkerSpec, handler: Handler | None = None) -> None:
        self.spec = spec
        self.q = spec.settings.queue(spec.queue)
        self.status = WorkerStatus(spec.worker_id, spec.queue, spec.device_id)
        self.conn = connect(spec.settings.redis)
        self.read_conn = connect(spec.settings.redis, block_ms=self.q.block_ms)
        self.heartbeat = Heartbeat(self.conn, self.status, spec.settings.worker.heartbeat_interval_s)
        self.handler = handler
        self.stopping = False
        self._worked = False  # ran a batch since the queue last ran dry
        # one stale entry at a time: a job that kills its worker takes no batch-mates with it
        self.reclaimer = Reclaimer(spec.queue, spec.worker_id, self.q.visibility_timeout_ms, 1)
        self.chores = Chores(self.conn, spec.queue)
        self.behind = WriteBehind()
        self.writer = OutcomeWriter(self.conn, spec.queue, OutcomePolicy(
            result_ttl_s=self.q.result_ttl_s,
            reply_ttl_s=spec.settings.worker.reply_ttl_s,
            max_deliveries=self.q.max_deliveries,
            retry_backoff_ms=self.q.retry_backoff_ms,
            dlq_max_len=spec.settings.worker.dlq_max_len,
        ))
        self._add_chores()

    def _add_chores(self) -> None:
        beat = self.spec.settings.worker.heartbeat_interval_s
        self.heartbeat.chores += [
            Chore("lease extension", self.q.visibility_timeout_ms / 3000, lambda: extend_leases(
                self.conn, self.spec.queue, self.spec.worker_id, self.status.held + self.behind.in_flight)),
            Chore("retry mover", min(beat, 0.25), self.chores.move_due_retries),
            Chore("trim", 5.0, self.chores.trim),
            Chore("consumer reaper", min(30.0, self.q.visibility_timeout_ms / 500),
                  lambda: self.chores.reap_consumers(2 * self.q.visibility_timeout_ms)),
        ]

    # -- signals -------------------------------------------------------------
    def request_stop(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        self.stopping = True
        self.heartbeat.stop_requested.set()

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    # -- lifecycle -------------------------------------------------------------
    def load(self) -> None:
        self.status.state = LOADING
        started = time.monotonic()
        assert self.handler is not None
        ctx = HandlerContext(
            queue=self.spec.queue,
            device_vendor=self.spec.device_vendor,
            cpu_count=len(self.spec.cpus) or (os.cpu_count() or 1),
            options=dict(self.q.handler_options),
        )
        self.handler.load(ctx)
        self.status.load_s = time.monotonic() - started
        log.info("worker %s loaded %s in %.2fs", self.spec.worker_id, self.q.handler, self.status.load_s,
                 extra=self._event("loaded", load_s=round(self.status.load_s, 3)))

    def run(self) -> int:
        try:
            return self._run()
        except FatalRedisError as exc:
            log.error("worker %s: Redis refused us, not retrying: %s", self.spec.worker_id, exc)
            return EXIT_REDIS_REFUSED

    def _event(self, event: str, **more: object) -> dict[str, object]:
        """`extra=` for a lifecycle log line: JSON logs (`log_json`) get these as fields."""
        s = self.spec
        return {"fields": {"event": f"worker.{event}", "worker": s.worker_id, "queue": s.queue,
                           "device": s.device_id, "pid": os.getpid(), **more}}

    def _run(self) -> int:
        self.install_signals()
        log.info("worker %s started (pid %d) for queue %s on %s", self.spec.worker_id, os.getpid(),
                 self.spec.queue, self.spec.device_id, extra=self._event("started"))
        if self.handler is None:
            self.handler = load_handler(self.q.handler)  # an unknown handler fails before any write
        self._until_ok(self._prepare)  # queue declared and group present before we register
        self.heartbeat.start()
        try:
            self.load()
        except BaseException:
            self.heartbeat.deregister()  # no ghost entry for a worker that never served
            raise
        self.status.state = IDLE
        while not self.stopping:
            self.step()
        self.behind.close()  # the last batch's outcomes and acks land before we leave
        self.status.state = DRAINING
        log.info("worker %s draining", self.spec.worker_id, extra=self._event("draining"))
        self._until_ok(self._finish, forever=False)
        log.info("worker %s drained and stopped", self.spec.worker_id, extra=self._event(
            "stopped", jobs_done=self.status.jobs_done, jobs_failed=self.status.jobs_failed))
        return 0

    def _prepare(self) -> None:
        self.heartbeat.unblock_id = self.read_conn.client_id()
        publish_queue(self.conn, self.spec.queue, self.q)
        if stream_io.ensure_group(self.conn, self.spec.queue):
            log.info("created consumer group for queue %s", self.spec.queue)

    def _finish(self) -> None:
        stream_io.delete_consumer_if_idle(self.conn, self.spec.queue, self.spec.worker_id)
        self.heartbeat.deregister()

    def step(self) -> None:
        """One read → run → write cycle (stale entries of dead workers first)."""
        try:
            if self.reclaimer.due(time.monotonic()):
                stale, deliveries = self.reclaimer.reclaim(self.conn)
                if stale:
                    log.warning("worker %s reclaimed %d stale entries", self.spec.worker_id, len(stale))
                    self.process(stale, deliveries)
                    return
            entries = stream_io.read_batch(
                self.read_conn,
                self.spec.queue,
                self.spec.worker_id,
                max_batch=self.q.max_batch,
                max_delay_ms=self.q.max_delay_ms,
                block_ms=self.q.block_ms,
                stopping=lambda: self.stopping,
                hold=self._hold,
            )
        except TRANSIENT_REFUSALS as exc:  # out of memory, loading, read-only: wait it out
            self._backoff(exc)
            return
        except redis.ResponseError as exc:
            log.error("queue %s: %s (group missing after a restart or flush?); re-creating it",
                      self.spec.queue, describe(exc))
            self._until_ok(self._prepare)
            return
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if not is_transient(exc):
                raise FatalRedisError(describe(exc)) from exc
            self._backoff(exc)
            return
        if entries:
            self.process(entries)
            self._worked = True
        elif self._worked and self.handler is not None:
            self._worked = False
            self.handler.idle()

    def _hold(self, entries: stream_io.Entries) -> None:
        self.status.held = tuple(e[0].decode() for e in entries)

    def process(self, entries: stream_io.Entries, deliveries: dict[str, int] | None = None) -> None:
        assert self.handler is not None
        self.status.state = BUSY
        self.status.busy_since_ms = int(time.time() * 1000)
        self._hold(entries)
        self.status.stats.begin_batch(len(entries))
        batch = decode_entries(entries, self.q.max_payload_bytes, self.spec.worker_id, deliveries)
        fail_exhausted(batch, self.q.max_deliveries, self.spec.worker_id)
        ran_at = time.perf_counter()
        run_batch(self.handler, batch, self.spec.worker_id)
        inference_s = time.perf_counter() - ran_at
        read_ms = self.status.busy_since_ms or 0
        if len(batch) >= self.q.max_batch:
            # a full batch: more is likely queued, so write on the writer thread while this
            # thread reads and runs the next one
            self.behind.submit(lambda: self._write(batch, read_ms, inference_s), self.status.held)
        else:  # the queue is drained: write now, the shortest way to the caller
            self.behind.wait()
            self._write(batch, read_ms, inference_s)
        self.status.held = ()
        self.status.busy_since_ms = None
        self.status.last_busy_ms = int(time.time() * 1000)
        self.status.state = IDLE

    def _write(self, batch: list[Work], read_ms: int, inference_s: float) -> None:
        self._until_ok(lambda: self.writer.write(batch))
        self.status.stats.record_batch(  # metrics (worker.stats): once per batch
            batch, max_batch=self.q.max_batch, max_deliveries=self.q.max_deliveries,
            read_ms=read_ms, done_ms=int(time.time() * 1000), inference_s=inference_s)
        failed = sum(1 for w in batch if w.outcome is not None and w.outcome.status != codec.STATUS_OK)
        self.status.jobs_done += len(batch) - failed
        self.status.jobs_failed += failed

    # -- faults ----------------------------------------------------------------
    _delay_s = 0.05

    def _backoff(self, exc: BaseException) -> None:
        log.warning("worker %s: Redis unavailable (%s); retrying in %.2fs", self.spec.worker_id,
                    type(exc).__name__, self._delay_s)
        time.sleep(self._delay_s * (0.5 + random.random()))
        self._delay_s = min(self._delay_s * 2, 5.0)

    def _until_ok(self, action: object, forever: bool = True) -> None:
        """Run `action` until Redis takes it (results must not be dropped)."""
        assert callable(action)
        attempts = 0
        while True:
            try:
                action()
                self._delay_s = 0.05
                return
            except (redis.ConnectionError, redis.TimeoutError, *TRANSIENT_REFUSALS) as exc:
                if not is_transient(exc):
                    raise FatalRedisError(describe(exc)) from exc
                attempts += 1
                if not forever and attempts >= 5:
                    log.error("worker %s: giving up after %d attempts: %s", self.spec.worker_id,
                              attempts, exc)
                    return
                self._backoff(exc)
