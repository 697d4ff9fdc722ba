"""The sync client library: submit jobs, wait for their outcomes.

    with Client("redis://localhost:6379") as fleet:
        job = fleet.submit("embed", "A man is playing guitar.")
        vector = job.result(timeout_s=10)
        vectors = fleet.map("embed", sentences)

Waiting is push-based: workers append each outcome to this client's own reply
stream, and one listener thread per client blocks on it. `AsyncClient` in
`fleet.aio` is the asyncio twin.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from queue import Empty, SimpleQueue
from typing import Any, cast

import redis

from fleet import codec, keys
from fleet.connection import connect
from fleet.errors import (
    ClientClosed,
    FleetError,
    InvalidPayload,
    JobTimeout,
    QueueFull,
    UnknownQueue,
    redis_errors,
)
from fleet.inbox import CountdownWaiter, Inbox
from fleet.jobstate import queue_info_of, status_of_replies, value_of
from fleet.settings import RedisSettings
from fleet.submit import (
    SUBMIT_CHUNK,
    SUBMIT_LUA,
    Coalescer,
    call_for,
    encode_payloads,
    parse_reply,
)

log = logging.getLogger("fleet.client")
QUEUE_INFO_TTL_S = 10.0
LISTEN_BLOCK_MS = 2000
_R_JOB_ID, _R_OUTCOME = keys.R_JOB_ID.encode(), keys.R_OUTCOME.encode()


def new_client_id(prefix: str = "c") -> str:
    client_id = f"{prefix}-{uuid.uuid4().hex[:16]}"
    if not keys.CLIENT_ID_RE.match(client_id):
        raise InvalidPayload("client id prefix must be letters, digits, _ . -")
    return client_id


def _settings(url: str | RedisSettings | None) -> RedisSettings:
    if isinstance(url, RedisSettings):
        return url
    if url is None:
        raise InvalidPayload("a Redis URL or RedisSettings is required")
    return RedisSettings(url=url)


class Job:
    """A handle on one submitted job. Its ID is the stream entry ID."""

    def __init__(self, client: Client, queue: str, job_id: str) -> None:
        self.client, self.queue, self.id = client, queue, job_id
        self._outcome: codec.Outcome | None = None

    def __repr__(self) -> str:
        return f"Job(queue={self.queue!r}, id={self.id!r})"

    def outcome(self, timeout_s: float | None = None) -> codec.Outcome:
        if self._outcome is None:
            self._outcome = self.client.wait_outcomes(self.queue, [self.id], timeout_s)[self.id]
        return self._outcome

    def result(self, timeout_s: float | None = None) -> Any:
        """The job's value; JobFailed if it failed, JobTimeout if none arrived in time."""
        return value_of(self.id, self.outcome(timeout_s))

    def status(self) -> str:
        return self.client.job_status(self.queue, self.id)


class Client:
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
        self._redis = connect(self.settings)
        self._submit_script = self._redis.register_script(SUBMIT_LUA)
        self._queue_info: dict[str, tuple[float, codec.QueueInfo]] = {}
        self._inbox = Inbox()
        self._listener: threading.Thread | None = None
        self._listener_conn_id: int | None = None
        self._closed = threading.Event()
        self._start_lock = threading.Lock()
        self._coalescer = Coalescer(
            lambda queue, encoded: self._run_submit(self.queue_info(queue), encoded, None, None), QueueFull
        )

    # -- lifecycle ---------------------------------------------------------
    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._listener is not None and self._listener_conn_id is not None:
            with contextlib.suppress(redis.RedisError):  # else its own block timeout ends it
                self._redis.client_unblock(self._listener_conn_id)
        if self._listener is not None:
            self._listener.join(timeout=LISTEN_BLOCK_MS / 1000 + 5)
        self._redis.close()

    # -- queues --------------------------------------------------------------
    def queue_info(self, queue: str) -> codec.QueueInfo:
        if self._closed.is_set():
            raise ClientClosed("the client is closed")
        cached = self._queue_info.get(queue)
        now = time.monotonic()
        if cached is not None and now - cached[0] < QUEUE_INFO_TTL_S:
            return cached[1]
        if not keys.valid_queue_name(queue):
            raise UnknownQueue(queue)
        with redis_errors():
            raw = self._redis.hget(keys.QUEUES, queue)
        info = queue_info_of(queue, cast(bytes | None, raw))
        self._queue_info[queue] = (now, info)
        return info

    # -- submitting ------------------------------------------------------------
    def submit(
        self,
        queue: str,
        payload: Any,
        *,
        idempotency_key: str | None = None,
        deadline_s: float | None = None,
    ) -> Job:
        """Append one job; returns its handle as soon as Redis has it."""
        info = self.queue_info(queue)
        encoded = encode_payloads(queue, [payload], info.max_payload_bytes)
        if idempotency_key is None and deadline_s is None:  # concurrent plain submits share a call
            return Job(self, queue, self._coalescer.submit(queue, encoded[0]))
        ids = self._run_submit(info, encoded, idempotency_key, deadline_s)
        return Job(self, queue, ids[0])

    def submit_many(self, queue: str, payloads: Iterable[Any]) -> list[Job]:
        """Append many jobs, pipelined in chunks; one bad payload writes nothing."""
        return [Job(self, queue, job_id) for job_id in self._submit_ids(queue, payloads)]

    def _submit_ids(self, queue: str, payloads: Iterable[Any]) -> list[str]:
        """`submit_many` without a handle per job: the IDs, in order (map needs no more)."""
        info = self.queue_info(queue)
        encoded = encode_payloads(queue, list(payloads), info.max_payload_bytes)
        ids: list[str] = []
        for start in range(0, len(encoded), SUBMIT_CHUNK):
            ids.extend(self._run_submit(info, encoded[start : start + SUBMIT_CHUNK], None, None))
        return ids

    def _run_submit(
        self,
        info: codec.QueueInfo,
        encoded: Sequence[bytes],
        idempotency_key: str | None,
        deadline_s: float | None,
    ) -> list[str]:
        if self.reply_key is not None:
            self._ensure_listener()
        call = call_for(info, encoded, self.reply_key, idempotency_key, deadline_s)
        with redis_errors():
            status, ids = parse_reply(self._submit_script(keys=call.keys, args=call.args))
        if status == "FULL":
            raise QueueFull(info.name, info.max_backlog)
        return ids

    # -- waiting -----------------------------------------------------------------
    def map(
        self,
        queue: str,
        payloads: Iterable[Any],
        *,
        timeout_s: float | None = None,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Run every payload through the queue; values in input order."""
        ids = self._submit_ids(queue, payloads)
        outcomes = self.wait_outcomes(queue, ids, timeout_s, partial=return_exceptions)
        values: list[Any] = []
        for job_id in ids:
            try:
                if job_id not in outcomes:
                    raise JobTimeout(job_id, timeout_s or 0.0)
                values.append(value_of(job_id, outcomes[job_id]))
            except FleetError as exc:
                if not return_exceptions:
                    raise
                values.append(exc)
        return values

    def wait_outcomes(
        self, queue: str, job_ids: Sequence[str], timeout_s: float | None, *, partial: bool = False
    ) -> dict[str, codec.Outcome]:
        """Block until every job has an outcome (pushed to our reply stream; a client
        made with reply=False looks in the result keys instead, backing off).
        `partial`: on timeout return what arrived instead of raising JobTimeout."""
        waiter = CountdownWaiter(len(set(job_ids)))
        self._inbox.register(job_ids, waiter)
        if self.reply_key is not None:
            self._ensure_listener()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        poll_s = 0.02
        while not waiter.done.is_set():
            if self._closed.is_set():
                raise ClientClosed("client closed while waiting for jobs")
            left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if left <= 0:
                break
            if self.reply_key is None:  # nothing is pushed to us: look, then wait a little longer
                self._fetch_missing(queue, job_ids, waiter)
                left, poll_s = min(left, poll_s), min(poll_s * 2, 1.0)
            waiter.done.wait(left)
        if not waiter.done.is_set():
            self._inbox.unregister(job_ids)
            self._fetch_missing(queue, job_ids, waiter)
        missing = [j for j in job_ids if j not in waiter.results]
        if missing and not partial:
            raise JobTimeout(missing[0], timeout_s or 0.0)
        return waiter.results

    def iter_outcomes(
        self, queue: str, job_ids: Sequence[str], timeout_s: float | None = None
    ) -> Iterator[tuple[str, codec.Outcome]]:
        """Yield (job ID, outcome) as each arrives, for progress bars."""
        arrived: SimpleQueue[tuple[str, codec.Outcome]] = SimpleQueue()
        waiter = _QueueWaiter(arrived)
        wanted = set(job_ids)
        self._inbox.register(wanted, waiter)
        self._ensure_listener()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while wanted:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                try:
                    job_id, outcome = arrived.get(timeout=1.0 if left is None else min(left, 1.0))
                except Empty:
                    if self._closed.is_set():
                        raise ClientClosed("client closed while waiting for jobs") from None
                    continue
                if job_id in wanted:
                    wanted.discard(job_id)
                    yield job_id, outcome
        finally:
            self._inbox.unregister(wanted)
        if wanted:
            raise JobTimeout(next(iter(wanted)), timeout_s or 0.0)

    def _fetch_missing(self, queue: str, job_ids: Sequence[str], waiter: CountdownWaiter) -> None:
        """Last look in the result keys (a reply may have been evicted or never asked for)."""
        missing = [j for j in job_ids if j not in waiter.results]
        if not missing:
            return
        with redis_errors():
            raws = self._redis.mget([keys.result(queue, j) for j in missing])
        for job_id, raw in zip(missing, raws, strict=True):
            if raw is not None:
                waiter.put(job_id, codec.decode_outcome(cast(bytes, raw)))

    def job(self, queue: str, job_id: str) -> Job:
        return Job(self, queue, job_id)

    def job_status(self, queue: str, job_id: str) -> str:
        with redis_errors():
            pipe = self._redis.pipeline(transaction=False)
            pipe.get(keys.result(queue, job_id))
            pipe.xpending_range(keys.jobs(queue), keys.GROUP, job_id, job_id, 1)
            pipe.xrange(keys.jobs(queue), job_id, job_id, 1)
            pipe.xinfo_groups(keys.jobs(queue))
            replies = pipe.execute(raise_on_error=False)
        return status_of_replies(job_id, replies)

    # -- the reply listener ----------------------------------------------------
    def _ensure_listener(self) -> None:
        if self._listener is not None or self.reply_key is None:
            return
        with self._start_lock:
            if self._listener is None:
                thread = threading.Thread(target=self._listen, name="fleet-replies", daemon=True)
                thread.start()
                self._listener = thread

    def _listen(self) -> None:
        assert self.reply_key is not None
        conn = connect(self.settings, block_ms=LISTEN_BLOCK_MS)
        last_id = b"0-0"
        delay_s = 0.05
        while not self._closed.is_set():
            try:
                self._listener_conn_id = conn.client_id()
                last_id = self._read_replies(conn, last_id)
                delay_s = 0.05
            except redis.RedisError as exc:
                if self._closed.is_set():
                    break
                log.warning("reply listener lost Redis (%s); retrying in %.2fs", type(exc).__name__, delay_s)
                self._closed.wait(delay_s * (1 + random.random()))
                delay_s = min(delay_s * 2, 5.0)
        conn.close()

    def _read_replies(self, conn: redis.Redis, last_id: bytes) -> bytes:
        """Block on the reply stream, deliver, repeat. What was read is trimmed in the
        same round trip as the next read (XTRIM then XREAD, pipelined), and replies
        are parsed raw (no dict per entry): one round trip per batch of replies."""
        assert self.reply_key is not None
        key = self.reply_key
        conn.set_response_callback("XREAD", _raw)
        read = ("XREAD", "COUNT", 10_000, "BLOCK", LISTEN_BLOCK_MS, "STREAMS", key)
        trimmed = last_id
        while not self._closed.is_set():
            pipe = conn.pipeline(transaction=False)
            if trimmed != last_id:
                pipe.execute_command("XTRIM", key, "MINID", last_id)
            pipe.execute_command(*read, last_id)
            trimmed, resp = last_id, pipe.execute()[-1]
            if not resp:
                continue
            entries = next(iter(resp.values())) if isinstance(resp, dict) else resp[0][1]  # RESP3 / 2
            self._inbox.deliver(_decode_raw_replies(entries))
            last_id = entries[-1][0]
        return last_id


class _QueueWaiter:
    def __init__(self, target: SimpleQueue[tuple[str, codec.Outcome]]) -> None:
        self.target = target

    def put(self, job_id: str, outcome: codec.Outcome) -> None:
        self.target.put((job_id, outcome))


def _raw(response: Any, **options: Any) -> Any:
    return response


def _decode_raw_replies(entries: list[list[Any]]) -> list[tuple[str, codec.Outcome]]:
    """Reply entries as Redis sent them: [id, [field, value, ...]]. The usual shape
    (``id``, ``o``) is read in place; any other becomes a dict for `_decode_replies`."""
    out = []
    for entry in entries:
        flat = entry[1]
        if len(flat) == 4 and flat[0] == _R_JOB_ID and flat[2] == _R_OUTCOME:
            try:
                out.append((flat[1].decode(), codec.decode_outcome(flat[3])))
            except (codec.DecodeError, UnicodeDecodeError):
                log.warning("ignored a malformed reply entry")
        else:
            out.extend(_decode_replies([(entry[0], dict(zip(flat[::2], flat[1::2], strict=False)))]))
    return out


def _decode_replies(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[tuple[str, codec.Outcome]]:
    out = []
    for _entry_id, fields in entries:
        job_id = fields.get(_R_JOB_ID)
        raw = fields.get(_R_OUTCOME)
        if job_id is None or raw is None:
            continue
        try:
            out.append((job_id.decode(), codec.decode_outcome(raw)))
        except (codec.DecodeError, UnicodeDecodeError):
            log.warning("ignored a malformed reply entry")
    return out
