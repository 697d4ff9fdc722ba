"""The asyncio client: the twin of `fleet.client.Client`, same arguments and semantics.

    async with AsyncClient("redis://localhost:6379") as fleet:
        job = await fleet.submit("embed", "A man is playing guitar.")
        vector = await job.result(timeout_s=10)
        vectors = await fleet.map("embed", sentences)

It shares the submit script and argument building (`fleet.submit`), the pure job
state rules (`fleet.jobstate`) and the reply bookkeeping (`fleet.inbox.Inbox`)
with the sync client. Waiting is push-based: one listener task per client blocks
on the client's reply stream and resolves the waiters' events. A client belongs
to the event loop that first uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis

from fleet import codec, keys
from fleet.client import LISTEN_BLOCK_MS, QUEUE_INFO_TTL_S, _decode_replies, _settings, new_client_id
from fleet.connection import connect_async
from fleet.errors import ClientClosed, JobTimeout, QueueFull, UnknownQueue, redis_errors
from fleet.inbox import Inbox
from fleet.jobstate import queue_info_of, status_of_replies, value_of
from fleet.settings import RedisSettings
from fleet.submit import SUBMIT_CHUNK, SUBMIT_LUA, call_for, encode_payloads, parse_reply

log = logging.getLogger("fleet.aio")
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 5.0
CANCEL_RETRY_S = 0.05


class EventWaiter:
    """Loop-side waiter for a set of jobs: one asyncio.Event for the whole set.

    `put` may be called on the loop's thread (the listener task) or from any
    other thread; the event is then set through `call_soon_threadsafe`.
    """

    def __init__(self, count: int, loop: asyncio.AbstractEventLoop) -> None:
        self.results: dict[str, codec.Outcome] = {}
        self.done = asyncio.Event()
        self._remaining = count
        self._lock = threading.Lock()
        self._loop = loop
        if count == 0:
            self.done.set()

    def put(self, job_id: str, outcome: codec.Outcome) -> None:
        with self._lock:
            if job_id in self.results:
                return
            self.results[job_id] = outcome
            self._remaining -= 1
            finished = self._remaining == 0
        if finished:
            self.wake()

    @property
    def complete(self) -> bool:
        with self._lock:
            return self._remaining <= 0

    def wake(self) -> None:
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self.done.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                self._loop.call_soon_threadsafe(self.done.set)


class AsyncJob:
    """A handle on one submitted job. Its ID is the stream entry ID."""

    def __init__(self, client: AsyncClient, queue: str, job_id: str) -> None:
        self.client, self.queue, self.id = client, queue, job_id
        self._outcome: codec.Outcome | None = None

    def __repr__(self) -> str:
        return f"AsyncJob(queue={self.queue!r}, id={self.id!r})"

    async def outcome(self, timeout_s: float | None = None) -> codec.Outcome:
        if self._outcome is None:
            outcomes = await self.client.wait_outcomes(self.queue, [self.id], timeout_s)
            self._outcome = outcomes[self.id]
        return self._outcome

    async def result(self, timeout_s: float | None = None) -> Any:
        """The job's value; JobFailed if it failed, JobTimeout if none arrived in time."""
        return value_of(self.id, await self.outcome(timeout_s))

    async def status(self) -> str:
        return await self.client.job_status(self.queue, self.id)


class AsyncClient:
    def __init__(
        self,
        url: str | RedisSettings | None = None,
        *,
        client_id_prefix: str = "c",
        reply: bool = True,
    ) -> None:
        self.settings = _settings(url)
        self.client_id = new_client_id(client_id_prefix)
        self.reply_key = keys.reply(self.client_id) if reply else None
        self._redis = connect_async(self.settings)  # connects lazily, on the first command
        self._submit_script = self._redis.register_script(SUBMIT_LUA)
        self._queue_info: dict[str, tuple[float, codec.QueueInfo]] = {}
        self._inbox = Inbox()
        self._waiters: set[EventWaiter] = set()
        self._listener: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------
    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """End the listener task, wake every waiter (ClientClosed) and close the connections."""
        if self._closed:
            return
        self._closed = True
        for waiter in list(self._waiters):
            waiter.wake()
        task, self._listener = self._listener, None
        if task is not None:
            await _cancel_and_wait(task)
        await self._redis.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed("the client is closed")

    # -- queues --------------------------------------------------------------
    async def queue_info(self, queue: str) -> codec.QueueInfo:
        cached = self._queue_info.get(queue)
        now = time.monotonic()
        if cached is not None and now - cached[0] < QUEUE_INFO_TTL_S:
            return cached[1]
        if not keys.valid_queue_name(queue):
            raise UnknownQueue(queue)
        self._check_open()
        with redis_errors():
            raw: bytes | None = await self._redis.hget(keys.QUEUES, queue)  # type: ignore[assignment]
        info = queue_info_of(queue, raw)
        self._queue_info[queue] = (now, info)
        return info

    # -- submitting ------------------------------------------------------------
    async def submit(
        self,
        queue: str,
        payload: Any,
        *,
        idempotency_key: str | None = None,
        deadline_s: float | None = None,
    ) -> AsyncJob:
        """Append one job; returns its handle as soon as Redis has it."""
        info = await self.queue_info(queue)
        encoded = encode_payloads(queue, [payload], info.max_payload_bytes)
        ids = await self._run_submit(info, encoded, idempotency_key, deadline_s)
        return AsyncJob(self, queue, ids[0])

    async def submit_many(self, queue: str, payloads: Iterable[Any]) -> list[AsyncJob]:
        """Append many jobs, in chunks of one script call each; one bad payload writes nothing."""
        info = await self.queue_info(queue)
        encoded = encode_payloads(queue, list(payloads), info.max_payload_bytes)
        ids: list[str] = []
        for start in range(0, len(encoded), SUBMIT_CHUNK):
            ids.extend(await self._run_submit(info, encoded[start : start + SUBMIT_CHUNK], None, None))
        return [AsyncJob(self, queue, job_id) for job_id in ids]

    async def _run_submit(
        self,
        info: codec.QueueInfo,
        encoded: Sequence[bytes],
        idempotency_key: str | None,
        deadline_s: float | None,
    ) -> list[str]:
        self._check_open()
        self._ensure_listener()
        call = call_for(info, encoded, self.reply_key, idempotency_key, deadline_s)
        with redis_errors():
            status, ids = parse_reply(await self._submit_script(keys=call.keys, args=call.args))
        if status == "FULL":
            raise QueueFull(info.name, info.max_backlog)
        return ids

    # -- waiting -----------------------------------------------------------------
    async def map(
        self,
        queue: str,
        payloads: Iterable[Any],
        *,
        timeout_s: float | None = None,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Run every payload through the queue; values in input order."""
        jobs = await self.submit_many(queue, payloads)
        ids = [job.id for job in jobs]
        outcomes = await self.wait_outcomes(queue, ids, timeout_s)
        values: list[Any] = []
        for job_id in ids:
            try:
                values.append(value_of(job_id, outcomes[job_id]))
            except Exception as exc:
                if not return_exceptions:
                    raise
                values.append(exc)
        return values

    async def wait_outcomes(
        self, queue: str, job_ids: Sequence[str], timeout_s: float | None
    ) -> dict[str, codec.Outcome]:
        """Wait until every job has an outcome (pushed to our reply stream)."""
        waiter = EventWaiter(len(set(job_ids)), asyncio.get_running_loop())
        self._inbox.register(job_ids, waiter)
        await self._wait(job_ids, waiter, timeout_s)
        if self._closed and not waiter.complete:
            raise ClientClosed("client closed while waiting for jobs")
        await self._fetch_missing(queue, job_ids, waiter)
        missing = [j for j in job_ids if j not in waiter.results]
        if missing:
            raise JobTimeout(missing[0], timeout_s or 0.0)
        return waiter.results

    async def _wait(self, job_ids: Sequence[str], waiter: EventWaiter, timeout_s: float | None) -> None:
        """Until the waiter is complete, the client closes or `timeout_s` passes."""
        self._waiters.add(waiter)
        try:
            if not self._closed:
                self._ensure_listener()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout_s):
                        await waiter.done.wait()
        finally:
            self._waiters.discard(waiter)
            if not waiter.complete:  # timed out, closed or cancelled: later outcomes stay unclaimed
                self._inbox.unregister(job_ids)

    async def _fetch_missing(self, queue: str, job_ids: Sequence[str], waiter: EventWaiter) -> None:
        """Last look in the result keys (a reply may have been evicted or never asked for)."""
        missing = [j for j in job_ids if j not in waiter.results]
        if not missing:
            return
        with redis_errors():
            raws: list[bytes | None] = await self._redis.mget([keys.result(queue, j) for j in missing])  # type: ignore[assignment]
        for job_id, raw in zip(missing, raws, strict=True):
            if raw is not None:
                waiter.put(job_id, codec.decode_outcome(raw))

    def job(self, queue: str, job_id: str) -> AsyncJob:
        return AsyncJob(self, queue, job_id)

    async def job_status(self, queue: str, job_id: str) -> str:
        self._check_open()
        with redis_errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(keys.result(queue, job_id))
                pipe.xpending_range(keys.jobs(queue), keys.GROUP, job_id, job_id, 1)
                pipe.xrange(keys.jobs(queue), job_id, job_id, 1)
                pipe.xinfo_groups(keys.jobs(queue))
                replies = await pipe.execute(raise_on_error=False)
        return status_of_replies(job_id, replies)

    # -- the reply listener ----------------------------------------------------
    def _ensure_listener(self) -> None:
        """Start the listener task on the running loop (no await: no race between callers)."""
        if self.reply_key is None or self._closed:
            return
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(
                self._listen(self.reply_key), name=f"fleet-replies-{self.client_id}"
            )
            self._listener.add_done_callback(_log_failure)

    async def _listen(self, reply_key: str) -> None:
        conn = connect_async(self.settings, block_ms=LISTEN_BLOCK_MS)
        last_id = b"0-0"
        delay_s = BACKOFF_MIN_S
        try:
            while not self._closed:
                try:
                    last_id = await self._read_replies(conn, reply_key, last_id)
                    delay_s = BACKOFF_MIN_S
                except redis.RedisError as exc:
                    log.warning(
                        "reply listener lost Redis (%s); retrying in %.2fs", type(exc).__name__, delay_s
                    )
                    await asyncio.sleep(delay_s * (1 + random.random()))
                    delay_s = min(delay_s * 2, BACKOFF_MAX_S)
        finally:
            await conn.aclose()

    async def _read_replies(self, conn: aioredis.Redis, reply_key: str, last_id: bytes) -> bytes:
        """One blocking read: deliver what arrived, trim it away; the new last ID."""
        # RESP2 replies, bytes: [[stream, [(id, fields), ...]]] (the stubs also allow RESP3 maps)
        resp: Any = await conn.xread({reply_key: last_id}, count=10_000, block=LISTEN_BLOCK_MS)
        if not resp:
            return last_id
        entries = resp[0][1]
        self._inbox.deliver(_decode_replies(entries))
        last_id = entries[-1][0]
        await conn.xtrim(reply_key, minid=last_id, approximate=False)
        return last_id


async def _cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel `task` until it ends. One cancel is not always enough on Python 3.11:
    redis-py sends each command under asyncio.wait_for, which drops a cancellation
    that lands as the send completes, and the task would go on to its next XREAD."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=CANCEL_RETRY_S)


def _log_failure(task: asyncio.Task[None]) -> None:
    """A listener that died of a bug is logged (and restarted by the next submit or wait)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("the reply listener failed", exc_info=task.exception())

