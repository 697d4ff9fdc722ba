"""Retries and dead letters: the pure decisions and the Lua that moves due retries.

A handler exception on a job that has deliveries left schedules a retry: the job
waits out an exponential backoff with jitter in ``fleet:{Q}:delayed`` and is then
appended to the stream again — atomically, by `MOVE_DUE_LUA` — carrying its
original ID, its delivery count and its error history. Past `max_deliveries` it
is dead: its outcome says so and the dead-letter stream keeps its history.
"""

from __future__ import annotations

import random
import time
from typing import Any

import msgpack

from fleet import codec, keys

FINAL, RETRY, DEAD = "final", "retry", "dead"

MOVE_DUE_LUA = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local job = cmsgpack.unpack(member)
  local fields = {}
  for k, v in pairs(job) do
    if k ~= 'e' then fields[#fields + 1] = k; fields[#fields + 1] = v end
  end
  redis.call('XADD', KEYS[2], '*', unpack(fields))
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""


def backoff_ms(attempt: int, base_ms: int, cap_ms: int = 300_000, rng: random.Random | None = None) -> int:
    """Exponential backoff with full jitter on the upper half: [d/2, d]."""
    if base_ms <= 0:
        return 0
    ceiling = min(cap_ms, base_ms * 2 ** max(0, attempt - 1))
    r = (rng or random).random()
    return int(ceiling / 2 + r * ceiling / 2)


def disposition(failed: bool, retryable: bool, attempts: int, max_deliveries: int) -> str:
    """What happens to a job after this delivery."""
    if not failed:
        return FINAL
    if attempts >= max_deliveries:
        return DEAD if retryable else FINAL
    return RETRY if retryable else FINAL


def retry_member(
    job: codec.Job, raw_payload: bytes, attempts: int, history: tuple[str, ...], entry_id: str
) -> bytes:
    """The delayed-set member: the fields of the next copy of the job (msgpack map)."""
    fields: dict[str, Any] = {
        keys.F_PAYLOAD: raw_payload,
        keys.F_ENQUEUED_MS: str(job.enqueued_ms),
        keys.F_ORIGIN: job.id,
        keys.F_ATTEMPTS: str(attempts),
        keys.F_HISTORY: codec.pack(list(history[-20:])),
        "e": entry_id,  # keeps members unique; not copied to the stream
    }
    if job.reply is not None:
        fields[keys.F_REPLY] = job.reply
    if job.deadline_ms is not None:
        fields[keys.F_DEADLINE_MS] = str(job.deadline_ms)
    return msgpack.packb(fields, use_bin_type=False)  # type: ignore[no-any-return]


def due_score(now_ms: int | None, delay_ms: int) -> int:
    return (now_ms if now_ms is not None else int(time.time() * 1000)) + delay_ms
