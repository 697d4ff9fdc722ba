"""AsyncClient against a real redis-server and real worker processes.

pytest-asyncio is not a dependency: each test runs its coroutine with asyncio.run,
and every wait in it is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
import redis

from fleet import codec, keys
from fleet.aio import AsyncClient, EventWaiter
from fleet.errors import ClientClosed, JobFailed, JobTimeout, PayloadTooLarge, QueueFull, UnknownQueue
from fleet.jobstate import DONE, QUEUED, UNKNOWN
from fleet.settings import QueueSettings
from tests.conftest import make_settings, wait_for
from worker.process import publish_queue

RUN_TIMEOUT_S = 60.0


def run(coro):
    """Run one test coroutine, bounded so a hang fails instead of stalling the suite."""

    async def bounded():
        async with asyncio.timeout(RUN_TIMEOUT_S):
            return await coro

    return asyncio.run(bounded())


def _registered(conn: redis.Redis, n: int) -> bool:
    return conn.hlen(keys.WORKERS) >= n


def _start_echo(redis_server, rconn, workers, n: int = 1, **queue) -> None:
    settings = make_settings(redis_server.url, echo={"handler": "echo", **queue})
    for _ in range(n):
        workers.start(settings, "echo")
    wait_for(lambda: _registered(rconn, n), what=f"{n} worker(s) registered")


def _declare_without_workers(rconn: redis.Redis, queue: str, **options) -> None:
    """What `fleet up` publishes for a queue, with no worker behind it."""
    publish_queue(rconn, queue, QueueSettings(handler="echo", **options))


def test_map_of_500_returns_values_in_input_order(redis_server, rconn, workers):
    _start_echo(redis_server, rconn, workers, n=2, max_batch=50)
    payloads = [{"i": i, "s": f"job-{i}"} for i in range(500)]

    async def main():
        async with AsyncClient(redis_server.url) as client:
            return await client.map("echo", payloads, timeout_s=30)

    assert run(main()) == payloads
    assert rconn.xinfo_groups(keys.jobs("echo"))[0]["pending"] == 0


def test_concurrent_submit_and_result_each_get_their_own_value(redis_server, rconn, workers):
    _start_echo(redis_server, rconn, workers, max_batch=8)

    async def one(client: AsyncClient, i: int):
        job = await client.submit("echo", {"n": i})
        return await job.result(timeout_s=20)

    async def main():
        async with AsyncClient(redis_server.url) as client:
            values = await asyncio.gather(*(one(client, i) for i in range(16)))
            # the listener trims what it consumed from the reply stream
            await _until(lambda: rconn.xlen(client.reply_key) <= 1, "reply stream trimmed")
            return values

    assert run(main()) == [{"n": i} for i in range(16)]


def test_job_status_and_outcome_through_the_handle(redis_server, rconn, workers):
    _start_echo(redis_server, rconn, workers)

    async def main():
        async with AsyncClient(redis_server.url) as client:
            job = await client.submit("echo", "hello", idempotency_key="k-1")
            assert await job.result(timeout_s=10) == "hello"
            # its reply was claimed above, so a fresh handle finds it by the last look after its wait
            outcome = await client.job("echo", job.id).outcome(timeout_s=0.2)
            again = await client.submit("echo", "other", idempotency_key="k-1")
            statuses = (await job.status(), await client.job_status("echo", "1-1"))
            return job.id, outcome, again.id, statuses

    job_id, outcome, again_id, statuses = run(main())
    assert outcome.status == codec.STATUS_OK and outcome.value == "hello"
    assert again_id == job_id  # idempotency key seen before: the same job
    assert statuses == (DONE, UNKNOWN)


def test_unknown_queue_and_payload_too_large_write_nothing(redis_server, rconn, workers):
    _start_echo(redis_server, rconn, workers, max_payload_bytes=100)

    async def main():
        async with AsyncClient(redis_server.url) as client:
            with pytest.raises(UnknownQueue):
                await client.submit("nope", "x")
            with pytest.raises(UnknownQueue):
                await client.queue_info("not a name")
            with pytest.raises(PayloadTooLarge) as too_large:
                await client.submit("echo", "x" * 200)
            with pytest.raises(PayloadTooLarge):
                await client.submit_many("echo", ["ok", "x" * 200])
            xlen = rconn.xlen(keys.jobs("echo"))
            value = await (await client.submit("echo", "ok")).result(timeout_s=10)
            return too_large.value, xlen, value

    err, xlen_after_rejects, value = run(main())
    assert (err.limit_bytes, err.size_bytes > 100) == (100, True)
    assert xlen_after_rejects == 0
    assert value == "ok"


def test_queue_full_when_backlog_is_at_its_limit(redis_server, rconn):
    _declare_without_workers(rconn, "tight", max_backlog=3)

    async def main():
        async with AsyncClient(redis_server.url) as client:
            assert (await client.queue_info("tight")).max_backlog == 3
            jobs = await client.submit_many("tight", [1, 2, 3])
            with pytest.raises(QueueFull) as full_one:
                await client.submit("tight", 4)
            with pytest.raises(QueueFull):
                await client.submit_many("tight", [5, 6])
            return len(jobs), full_one.value

    n_jobs, err = run(main())
    assert (n_jobs, err.queue, err.limit) == (3, "tight", 3)
    assert rconn.xlen(keys.jobs("tight")) == 3


def test_job_failed_carries_the_remote_error_and_fails_alone(redis_server, rconn, workers):
    _start_echo(redis_server, rconn, workers, max_batch=10)

    async def main():
        async with AsyncClient(redis_server.url) as client:
            good = await client.submit_many("echo", [1, 2])
            # an entry the worker cannot decode, addressed to this client's reply stream
            bad_id = rconn.xadd(keys.jobs("echo"), {"p": b"\xc1", "reply": client.reply_key}).decode()
            more = await client.submit_many("echo", [3])
            values = [await job.result(timeout_s=10) for job in good + more]
            with pytest.raises(JobFailed) as failed:
                await client.job("echo", bad_id).result(timeout_s=10)
            mapped = await client.map("echo", [7], timeout_s=10, return_exceptions=True)
            return values, failed.value, bad_id, mapped

    values, err, bad_id, mapped = run(main())
    assert values == [1, 2, 3]
    assert err.job_id == bad_id and "malformed job" in err.error
    assert mapped == [7]


def test_job_timeout_when_no_worker_runs(redis_server, rconn):
    _declare_without_workers(rconn, "idle")

    async def main():
        async with AsyncClient(redis_server.url) as client:
            job = await client.submit("idle", "x")
            started = time.monotonic()
            with pytest.raises(JobTimeout) as timed_out:
                await job.result(timeout_s=0.3)
            waited_s = time.monotonic() - started
            with pytest.raises(JobTimeout):
                await client.map("idle", ["y"], timeout_s=0.2)
            return job.id, timed_out.value, waited_s, await job.status()

    job_id, err, waited_s, status = run(main())
    assert (err.job_id, err.timeout_s) == (job_id, 0.3)
    assert 0.3 <= waited_s < 5
    assert status == QUEUED


def test_timeout_takes_a_last_look_at_the_result_key(redis_server, rconn):
    _declare_without_workers(rconn, "idle")

    async def main():
        # reply=False: no reply stream, so only the last look can find the outcome
        async with AsyncClient(redis_server.url, reply=False) as client:
            job = await client.submit("idle", "x")
            outcome = codec.Outcome(status=codec.STATUS_OK, value="from the key")
            rconn.set(keys.result("idle", job.id), outcome.encode())
            return await job.result(timeout_s=0.1)

    assert run(main()) == "from the key"


def test_close_ends_the_listener_and_wakes_waiters(redis_server, rconn):
    _declare_without_workers(rconn, "idle")

    async def main():
        client = AsyncClient(redis_server.url)
        job = await client.submit("idle", "x")
        waiting = asyncio.create_task(job.result(timeout_s=30))
        await _until(lambda: client._waiters, "the waiter registered")
        listener = client._listener
        started = time.monotonic()
        await client.close()
        closed_in_s = time.monotonic() - started
        with pytest.raises(ClientClosed):
            await waiting
        with pytest.raises(ClientClosed):
            await client.submit("idle", "y")
        await client.close()  # idempotent
        return listener is not None and listener.done(), closed_in_s

    listener_done, closed_in_s = run(main())
    assert listener_done
    assert closed_in_s < 1.0


def test_listener_survives_a_redis_restart(redis_server, rconn, workers):
    _start_echo(redis_server, rconn, workers)

    async def main():
        async with AsyncClient(redis_server.url) as client:
            assert await (await client.submit("echo", 1)).result(timeout_s=10) == 1
            # drop the listener's connection (the one blocked in XREAD); it reconnects
            listeners = [c for c in rconn.client_list() if c["cmd"] == "xread"]
            assert len(listeners) == 1
            rconn.client_kill_filter(_id=listeners[0]["id"])
            job = await client.submit("echo", 2)
            return await job.result(timeout_s=20)

    assert run(main()) == 2


def test_listener_backs_off_exponentially_while_redis_is_down(redis_server, rconn, caplog):
    _declare_without_workers(rconn, "idle")

    def retry_delays() -> list[float]:
        return [r.args[1] for r in caplog.records if r.name == "fleet.aio" and "retrying" in r.msg]

    async def main():
        async with AsyncClient(redis_server.url) as client:
            await client.submit("idle", "x")
            redis_server.kill()
            await _until(lambda: len(retry_delays()) >= 3, "three reconnect attempts", timeout_s=30)
            started = time.monotonic()
        return time.monotonic() - started

    caplog.set_level(logging.WARNING, logger="fleet.aio")
    closed_in_s = run(main())
    assert retry_delays()[:3] == [0.05, 0.1, 0.2]  # doubling, not a hot loop
    assert closed_in_s < 1.0


def test_event_waiter_is_woken_from_another_thread():
    async def main():
        waiter = EventWaiter(2, asyncio.get_running_loop())
        outcome = codec.Outcome(status=codec.STATUS_OK, value=1)
        waiter.put("1-0", outcome)  # on the loop's thread
        waiter.put("1-0", outcome)  # a duplicate does not count twice
        assert not waiter.done.is_set()
        thread = threading.Thread(target=waiter.put, args=("2-0", outcome))
        thread.start()
        async with asyncio.timeout(5):
            await waiter.done.wait()
        thread.join(5)
        return waiter.complete, sorted(waiter.results)

    assert run(main()) == (True, ["1-0", "2-0"])


async def _until(predicate, what: str, timeout_s: float = 10.0) -> None:
    """wait_for for coroutines: poll with a deadline without blocking the loop."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)
