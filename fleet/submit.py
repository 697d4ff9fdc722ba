"""The submit path shared by the sync and async clients: the Lua script that
checks the backlog and appends jobs atomically, and the pure argument building.

One round trip per call, for one job or a chunk of many. The script returns
``{"OK", id...}``, ``{"FULL"}`` or ``{"DUP", id}`` (idempotency key seen before).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fleet import codec, keys
from fleet.errors import InvalidPayload, PayloadTooLarge

SUBMIT_LUA = """
local n = #ARGV - 5
if redis.call('XLEN', KEYS[1]) + n > tonumber(ARGV[1]) then
  return {'FULL'}
end
if KEYS[2] then
  local seen = redis.call('GET', KEYS[2])
  if seen then return {'DUP', seen} end
end
local out = {'OK'}
local fields = {'t', ARGV[2]}
if ARGV[3] ~= '' then fields[#fields + 1] = 'reply'; fields[#fields + 1] = ARGV[3] end
if ARGV[5] ~= '' then fields[#fields + 1] = 'deadline'; fields[#fields + 1] = ARGV[5] end
for i = 6, #ARGV do
  out[#out + 1] = redis.call('XADD', KEYS[1], '*', 'p', ARGV[i], unpack(fields))
end
if KEYS[2] then redis.call('SET', KEYS[2], out[2], 'EX', tonumber(ARGV[4])) end
return out
"""

SUBMIT_CHUNK = 1000  # jobs per script call in submit_many


@dataclass(frozen=True, slots=True)
class SubmitCall:
    keys: list[str]
    args: list[Any]


def encode_payloads(
    queue: str, payloads: Sequence[Any], max_payload_bytes: int
) -> list[bytes]:
    """Encode every payload first; one over the limit means nothing is written."""
    encoded = []
    for payload in payloads:
        data = codec.pack(payload)
        if len(data) > max_payload_bytes:
            raise PayloadTooLarge(queue, len(data), max_payload_bytes)
        encoded.append(data)
    return encoded


def build_call(
    queue: str,
    encoded: Sequence[bytes],
    *,
    max_backlog: int,
    now_ms: int,
    reply_key: str | None,
    idempotency_key: str | None = None,
    idempotency_ttl_s: int = 3600,
    deadline_ms: int | None = None,
) -> SubmitCall:
    call_keys = [keys.jobs(queue)]
    if idempotency_key is not None:
        if not keys.IDEMPOTENCY_KEY_RE.match(idempotency_key):
            raise InvalidPayload("idempotency_key must be 1-200 printable ASCII characters")
        call_keys.append(keys.idempotency(queue, idempotency_key))
    args: list[Any] = [
        max_backlog,
        now_ms,
        reply_key or "",
        idempotency_ttl_s,
        "" if deadline_ms is None else deadline_ms,
        *encoded,
    ]
    return SubmitCall(call_keys, args)


def call_for(
    info: codec.QueueInfo,
    encoded: Sequence[bytes],
    reply_key: str | None,
    idempotency_key: str | None = None,
    deadline_s: float | None = None,
) -> SubmitCall:
    """The script call for jobs of one queue, stamped now (both clients use this)."""
    now_ms = int(time.time() * 1000)
    return build_call(
        info.name,
        encoded,
        max_backlog=info.max_backlog,
        now_ms=now_ms,
        reply_key=reply_key,
        idempotency_key=idempotency_key,
        idempotency_ttl_s=info.result_ttl_s,
        deadline_ms=None if deadline_s is None else now_ms + int(deadline_s * 1000),
    )


def parse_reply(reply: list[Any]) -> tuple[str, list[str]]:
    status = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
    ids = [r.decode() if isinstance(r, bytes) else str(r) for r in reply[1:]]
    return status, ids


class _Slot:
    __slots__ = ("done", "encoded", "error", "job_id", "lead")

    def __init__(self, encoded: bytes) -> None:
        self.encoded = encoded
        self.done = threading.Event()
        self.lead = False
        self.job_id: str | None = None
        self.error: BaseException | None = None


class Coalescer:
    """Group commit for concurrent one-job submits to the same queue.

    While one thread's script call is in flight, other threads' submits to that
    queue wait; when it returns, the first waiter leads and sends every waiting job
    in one call. A lone submit is sent at once, as before. `run(queue, encoded)`
    appends the jobs and returns their IDs in order. A shared call that finds the
    queue full is retried one job at a time, so each job is admitted or refused
    exactly as it would be alone.
    """

    def __init__(self, run: Callable[[str, list[bytes]], list[str]], full: type[Exception]) -> None:
        self._run, self._full = run, full
        self._lock = threading.Lock()
        self._waiting: dict[str, list[_Slot]] = {}
        self._busy: set[str] = set()

    def submit(self, queue: str, encoded: bytes) -> str:
        slot = _Slot(encoded)
        with self._lock:
            self._waiting.setdefault(queue, []).append(slot)
            if queue not in self._busy:
                self._busy.add(queue)
                slot.lead = True
        if not slot.lead:
            slot.done.wait()
        if slot.job_id is None and slot.error is None:  # leading: first in, or promoted
            self._lead(queue)
        if slot.error is not None:
            raise slot.error
        assert slot.job_id is not None
        return slot.job_id

    def _lead(self, queue: str) -> None:
        with self._lock:
            batch = self._waiting.pop(queue, [])
        try:
            self._send(queue, batch)
        finally:
            with self._lock:
                following = self._waiting.get(queue)
                if following:
                    following[0].lead = True
                else:
                    self._busy.discard(queue)
            for slot in batch:
                slot.done.set()
            if following:
                following[0].done.set()

    def _send(self, queue: str, batch: list[_Slot]) -> None:
        try:
            ids = self._run(queue, [s.encoded for s in batch])
            for slot, job_id in zip(batch, ids, strict=True):
                slot.job_id = job_id
        except self._full:
            if len(batch) == 1:
                batch[0].error = sys.exc_info()[1]
                return
            for slot in batch:
                self._send(queue, [slot])
        except BaseException as exc:
            for slot in batch:
                slot.error = exc
