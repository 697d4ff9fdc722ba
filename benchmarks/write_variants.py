"""How the worker's per-batch write could be cheaper: three ways to write the same
results, replies and acks for a batch of no-op outcomes, measured as CPU per job in
this process (Python) and in redis-server (INFO cpu).

    .venv/bin/python benchmarks/write_variants.py [--batch 1000] [--batches 50]

A: what worker/stream_io.write_outcomes does today: redis-py's `set(ex=, nx=)`,
   `xadd`, `expire`, `xack` in a pipeline;
B: the same commands through `execute_command` (skips redis-py's keyword
   handling: `_get_filterable_args`, `at_most_one_value_set`, the `set` wrapper);
C: one EVALSHA per batch: a Lua loop does SET NX EX + XADD per job, EXPIRE and XACK.
Self-contained (no worker imports): the worker loop is being changed elsewhere.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from fleet import codec, keys
from fleet.redis_server import RedisServer

QUEUE = "w"
REPLY = keys.reply("c-bench")
WRITE_LUA = """
local ttl, n = ARGV[1], 0
for i = 4, #ARGV, 2 do
  redis.call('SET', KEYS[2] .. ARGV[i], ARGV[i + 1], 'EX', ttl, 'NX')
  redis.call('XADD', KEYS[3], '*', 'id', ARGV[i], 'o', ARGV[i + 1])
  n = n + 1
end
redis.call('EXPIRE', KEYS[3], ARGV[2])
return n
"""

Batch = list[tuple[str, bytes]]


def write_a(conn: redis.Redis, batch: Batch) -> None:
    pipe = conn.pipeline(transaction=False)
    for job_id, encoded in batch:
        pipe.set(keys.result(QUEUE, job_id), encoded, ex=3600, nx=True)
        pipe.xadd(REPLY, {keys.R_JOB_ID: job_id, keys.R_OUTCOME: encoded})
    pipe.expire(REPLY, 86400)
    pipe.xack(keys.jobs(QUEUE), keys.GROUP, *[j for j, _ in batch])
    pipe.execute()


def write_b(conn: redis.Redis, batch: Batch) -> None:
    pipe = conn.pipeline(transaction=False)
    command = pipe.execute_command
    prefix = keys.result(QUEUE, "")
    for job_id, encoded in batch:
        command("SET", prefix + job_id, encoded, "EX", 3600, "NX")
        command("XADD", REPLY, "*", keys.R_JOB_ID, job_id, keys.R_OUTCOME, encoded)
    command("EXPIRE", REPLY, 86400)
    command("XACK", keys.jobs(QUEUE), keys.GROUP, *[j for j, _ in batch])
    pipe.execute()


def make_write_c(conn: redis.Redis) -> Callable[[redis.Redis, Batch], None]:
    script = conn.register_script(WRITE_LUA)

    def write_c(conn: redis.Redis, batch: Batch) -> None:
        args: list[object] = [3600, 86400, 0]
        for job_id, encoded in batch:
            args += (job_id, encoded)
        pipe = conn.pipeline(transaction=False)
        script(keys=[keys.jobs(QUEUE), keys.result(QUEUE, ""), REPLY], args=args, client=pipe)
        pipe.xack(keys.jobs(QUEUE), keys.GROUP, *[j for j, _ in batch])
        pipe.execute()

    return write_c


def server_cpu_s(conn: redis.Redis) -> float:
    info = conn.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure(conn: redis.Redis, write: Callable[[redis.Redis, Batch], None], size: int, rounds: int) -> str:
    outcome = codec.Outcome(codec.STATUS_OK, value=1, worker="w-1").encode()
    batches = [[(f"{r}-{i}", outcome) for i in range(size)] for r in range(rounds)]
    conn.flushall()
    cpu0, srv0, wall0 = time.process_time(), server_cpu_s(conn), time.perf_counter()
    for batch in batches:
        write(conn, batch)
    jobs = size * rounds
    cpu, srv = time.process_time() - cpu0, server_cpu_s(conn) - srv0
    wall = time.perf_counter() - wall0
    return (
        f"python {1e6 * cpu / jobs:5.1f} us/job, redis {1e6 * srv / jobs:5.1f} us/job, "
        f"{jobs / wall:,.0f} jobs/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            conn = redis.Redis.from_url(server.url)
            variants = {
                "A redis-py commands": write_a,
                "B execute_command": write_b,
                "C one Lua call": make_write_c(conn),
            }
            for name, write in variants.items():
                measure(conn, write, args.batch, 5)  # warm
                print(f"{name:22s} {measure(conn, write, args.batch, args.batches)}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
