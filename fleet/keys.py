"""The Redis schema. Every key, stream, group and field Fleet uses is named here.

All keys of one queue share the hash tag ``{Q}`` so that one queue lives in one
Redis Cluster slot. Nobody else spells a key by hand.

| key                          | type   | written by        | read by           | TTL / bound            |
|------------------------------|--------|-------------------|-------------------|------------------------|
| fleet:{Q}:jobs               | stream | client (XADD)     | workers (group)   | trimmed below the ack  |
|   group ``workers``          |        | created MKSTREAM  |                   | re-created on NOGROUP  |
| fleet:{Q}:result:<id>        | string | worker            | client, CLI       | queue ``result_ttl_s`` |
| fleet:{Q}:dlq                | stream | worker            | CLI ``dlq``       | MAXLEN ~ dlq_max_len   |
| fleet:{Q}:delayed            | zset   | worker (retries)  | worker (mover)    | members leave on move  |
| fleet:{Q}:idem:<key>         | string | client (SET NX)   | client            | queue ``result_ttl_s`` |
| fleet:reply:{<client>}       | stream | worker (XADD)     | its client only   | EXPIRE reply_ttl_s     |
| fleet:queues                 | hash   | fleet up / worker | client, CLI       | queue -> QueueInfo     |
| fleet:workers                | hash   | worker heartbeats | scaler, status    | entries reaped by age  |
| fleet:scale                  | hash   | ``fleet scale``   | scaler            | queue -> override      |
| fleet:decisions              | hash   | scaler            | ``fleet status``  | queue -> last decision |
| fleet:hosts                  | hash   | scaler supervisor | ``fleet status``  | host -> status, by age |
| fleet:devices                | hash   | scaler            | ``fleet status``  | host/device -> reading |
| fleet:exits                  | stream | worker (on exit)  | scaler metrics    | MAXLEN ~ 10000         |

Job stream entry fields (the entry ID *is* the job ID): ``p`` payload (msgpack
bytes), ``t`` enqueue time ms, optional ``reply`` (reply stream key), optional
``deadline`` (epoch ms), optional ``key`` (idempotency key), ``n`` earlier
deliveries carried over from retries (absent on a first submit), ``h`` error
history and ``o`` the original job ID (both only on a retried copy).

A worker's ``fleet:workers`` entry carries its cumulative counters in ``stats``
(format: `fleet.telemetry`). On a clean exit it appends that entry once more to
``fleet:exits`` (fields ``id`` worker ID, ``w`` the entry) before removing it, so
the scaler's /metrics totals keep the work done since the last heartbeat.
"""

from __future__ import annotations

import re

PREFIX = "fleet"
GROUP = "workers"

# job entry fields
F_PAYLOAD = "p"
F_ENQUEUED_MS = "t"
F_REPLY = "reply"
F_DEADLINE_MS = "deadline"
F_IDEMPOTENCY_KEY = "key"
F_ATTEMPTS = "n"
F_HISTORY = "h"
F_ORIGIN = "o"
JOB_FIELDS = frozenset(
    {F_PAYLOAD, F_ENQUEUED_MS, F_REPLY, F_DEADLINE_MS, F_IDEMPOTENCY_KEY, F_ATTEMPTS, F_HISTORY, F_ORIGIN}
)

# reply stream entry fields
R_JOB_ID = "id"
R_OUTCOME = "o"
R_QUEUE = "q"

QUEUE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")
IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,200}$")

QUEUES = f"{PREFIX}:queues"
WORKERS = f"{PREFIX}:workers"
SCALE = f"{PREFIX}:scale"
DECISIONS = f"{PREFIX}:decisions"
# host name -> msgpack {host, scaler_pid, beat_ms, cgroups: {available, reason},
# isolation: {on, reason}, workers, adopted, crashloops: {queue: {consecutive,
# total, last_error, retry_in_s}}}; written about once a second by each host's
# scaler, deleted when it exits; a stale beat_ms means that scaler is gone.
HOSTS = f"{PREFIX}:hosts"
DEVICES = f"{PREFIX}:devices"
EXITS = f"{PREFIX}:exits"
# fleet:exits entry fields
X_WORKER_ID = "id"
X_ENTRY = "w"


def valid_queue_name(queue: str) -> bool:
    return bool(QUEUE_NAME_RE.match(queue))


def jobs(queue: str) -> str:
    return f"{PREFIX}:{{{queue}}}:jobs"


def result(queue: str, job_id: str) -> str:
    return f"{PREFIX}:{{{queue}}}:result:{job_id}"


def dlq(queue: str) -> str:
    return f"{PREFIX}:{{{queue}}}:dlq"


def delayed(queue: str) -> str:
    return f"{PREFIX}:{{{queue}}}:delayed"


def idempotency(queue: str, key: str) -> str:
    return f"{PREFIX}:{{{queue}}}:idem:{key}"


def reply(client_id: str) -> str:
    return f"{PREFIX}:reply:{{{client_id}}}"


def queue_of_jobs_key(key: str) -> str | None:
    """The queue name inside a jobs key, or None when it is not one."""
    m = re.fullmatch(rf"{PREFIX}:\{{([^}}]+)\}}:jobs", key)
    return m.group(1) if m else None


def is_reply_key(key: str) -> bool:
    return bool(re.fullmatch(rf"{PREFIX}:reply:\{{[A-Za-z0-9_.-]{{1,80}}\}}", key))
