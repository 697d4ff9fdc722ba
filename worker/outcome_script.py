"""One script call writes a whole batch: results, replies, retries, dead letters, acks.

Atomic: the acks land only with the outcomes. The script declares itself with a
shebang, so under OOM (or on a read-only replica) Redis refuses it before it
runs — nothing is acknowledged and the worker retries. A reply stream of the
wrong type costs only that reply (pcall), never the batch.

The batch travels as one msgpack array (one `packb` for the whole batch), so the
per-job cost in Python is building a small list, not a redis-py command each.
Item layout: ``[kind, job_id, entry_id, outcome, reply, extra...]`` with kind
``f`` (final), ``d`` (dead: extra = flat dead-letter fields) or ``r`` (retry:
extra = delayed-set member, due score).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from fleet import codec, keys
from worker import retry
from worker.execute import Work

WRITE_LUA = """#!lua
local items = cmsgpack.unpack(ARGV[1])
local result_prefix, group = ARGV[2], ARGV[3]
local ttl, reply_ttl, dlq_max = ARGV[4], ARGV[5], ARGV[6]
local acks, replies, refused = {}, {}, 0
for _, it in ipairs(items) do
  local kind, job_id, out, reply = it[1], it[2], it[4], it[5]
  acks[#acks + 1] = it[3]
  if kind == 'r' then
    redis.call('ZADD', KEYS[3], it[7], it[6])
  else
    if kind == 'd' then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', dlq_max, '*', unpack(it[6]))
    end
    redis.call('SET', result_prefix .. job_id, out, 'EX', ttl, 'NX')
    if reply ~= '' then
      local ok = redis.pcall('XADD', reply, '*', 'id', job_id, 'o', out)
      if type(ok) == 'table' and ok.err then refused = refused + 1 else replies[reply] = true end
    end
  end
end
for reply, _ in pairs(replies) do redis.pcall('EXPIRE', reply, reply_ttl) end
for i = 1, #acks, 1000 do
  redis.call('XACK', KEYS[1], group, unpack(acks, i, math.min(i + 999, #acks)))
end
return refused
"""


@dataclass(frozen=True)
class OutcomePolicy:
    result_ttl_s: int
    reply_ttl_s: int
    max_deliveries: int
    retry_backoff_ms: int
    dlq_max_len: int


def _dead_fields(work: Work, outcome: codec.Outcome) -> list[Any]:
    flat: list[Any] = []
    for k, v in work.fields.items():
        if k != keys.F_HISTORY.encode():
            flat += [k, v]
    flat += ["id", work.job_id, "error", outcome.error or "", "attempts", str(outcome.attempts),
             "worker", outcome.worker, "history", codec.pack(list(outcome.history)),
             "dead_ms", str(int(time.time() * 1000))]
    return flat


def batch_items(batch: Sequence[Work], policy: OutcomePolicy, now_ms: int) -> list[list[Any]]:
    """What the script does for each job of the batch (pure)."""
    items: list[list[Any]] = []
    for work in batch:
        outcome = work.outcome
        assert outcome is not None
        failed = outcome.status != codec.STATUS_OK
        what = retry.disposition(failed, work.retryable, work.attempts, policy.max_deliveries)
        reply = work.reply or ""
        if what == retry.RETRY and work.job is not None:
            member = retry.retry_member(work.job, work.fields[_P], work.attempts, outcome.history,
                                        work.entry_id)
            due = retry.due_score(now_ms, retry.backoff_ms(work.attempts, policy.retry_backoff_ms))
            items.append(["r", work.job_id, work.entry_id, b"", reply, member, str(due)])
        elif what == retry.DEAD:
            dead = dataclasses.replace(outcome, status=codec.STATUS_DEAD)
            items.append(["d", work.job_id, work.entry_id, dead.encode(), reply, _dead_fields(work, dead)])
        else:
            items.append(["f", work.job_id, work.entry_id, outcome.encode(), reply])
    return items


_P = keys.F_PAYLOAD.encode()


class OutcomeWriter:
    """Writes batches of one queue through the script (loaded once per connection)."""

    def __init__(self, conn: Any, queue: str, policy: OutcomePolicy) -> None:
        self.queue, self.policy = queue, policy
        self.script = conn.register_script(WRITE_LUA)
        self.keys = [keys.jobs(queue), keys.dlq(queue), keys.delayed(queue)]
        self.refused_replies = 0

    def write(self, batch: Sequence[Work]) -> None:
        items = batch_items(batch, self.policy, int(time.time() * 1000))
        p = self.policy
        args = [msgpack.packb(items, use_bin_type=False), keys.result(self.queue, ""), keys.GROUP,
                p.result_ttl_s, p.reply_ttl_s, p.dlq_max_len]
        self.refused_replies += int(self.script(keys=self.keys, args=args))
