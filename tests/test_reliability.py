"""Lose nothing: reclaim, leases, retries, dead letters, Redis faults, hygiene."""

from __future__ import annotations

import signal

import pytest
import redis

from fleet import codec, keys
from fleet.cli.up import publish_queues
from fleet.client import Client
from fleet.errors import JobFailed
from fleet.redis_server import RedisServer
from tests.conftest import make_settings, wait_for


def _pending(conn: redis.Redis, queue: str) -> int:
    return int(conn.xpending(keys.jobs(queue), keys.GROUP)["pending"])


def _registered(conn: redis.Redis, n: int) -> bool:
    return conn.hlen(keys.WORKERS) >= n


def test_handler_exception_retries_with_backoff_then_dead_letters(redis_server, rconn, workers):
    settings = make_settings(redis_server.url, q={
        "handler": "sleep", "max_batch": 8, "max_deliveries": 3, "retry_backoff_ms": 50,
        "handler_options": {"ms_per_batch": 1, "allow_raise": True}})
    workers.start(settings, "q")
    with Client(redis_server.url) as client:
        wait_for(lambda: _registered(rconn, 1), what="worker registered")
        bad = client.submit("q", {"raise": "model exploded"})
        good = client.submit_many("q", list(range(10)))
        with pytest.raises(JobFailed, match="model exploded") as err:
            bad.result(timeout_s=20)
        assert [j.result(timeout_s=20) for j in good] == list(range(10))
        outcome = bad.outcome()
    assert outcome.status == codec.STATUS_DEAD and outcome.attempts == 3 and err.value.attempts == 3
    assert outcome.history == ("RuntimeError: model exploded",) * 3
    dead = rconn.xrange(keys.dlq("q"))
    assert len(dead) == 1
    assert dead[0][1][b"id"].decode() == bad.id and dead[0][1][b"attempts"] == b"3"
    assert codec.unpack(dead[0][1][b"p"]) == {"raise": "model exploded"}
    assert rconn.zcard(keys.delayed("q")) == 0 and _pending(rconn, "q") == 0


def test_job_that_kills_its_worker_lands_in_the_dlq_and_the_others_finish(redis_server, rconn, workers):
    settings = make_settings(redis_server.url, q={
        "handler": "sleep", "max_batch": 4, "max_deliveries": 2, "visibility_timeout_ms": 300,
        "handler_options": {"ms_per_batch": 1, "allow_exit": True}})
    publish_queues(rconn, settings)
    with Client(redis_server.url) as client:
        killer = client.submit("q", {"exit": 9})
        others = client.submit_many("q", list(range(20)))
        procs = [workers.start(settings, "q")]
        deaths = 0

        def all_done() -> bool:
            nonlocal deaths
            if procs[-1].poll() is not None:  # the killer took it down: replace it
                deaths += 1
                procs.append(workers.start(settings, "q"))
            return rconn.exists(keys.result("q", killer.id)) and all(
                rconn.exists(keys.result("q", j.id)) for j in others)

        wait_for(all_done, timeout_s=60, what="every job to end")
        with pytest.raises(JobFailed, match="delivered 3 times"):
            killer.result(timeout_s=5)
        assert [j.result(timeout_s=5) for j in others] == list(range(20))
    assert deaths == 2  # max_deliveries deliveries killed a worker each; the next is dead on arrival
    dead = rconn.xrange(keys.dlq("q"))
    assert [d[1][b"id"].decode() for d in dead] == [killer.id]
    assert _pending(rconn, "q") == 0


def test_a_long_batch_keeps_its_lease_and_runs_once(redis_server, rconn, workers):
    settings = make_settings(redis_server.url, q={
        "handler": "sleep", "max_batch": 5, "visibility_timeout_ms": 400,
        "handler_options": {"ms_per_batch": 1500}})
    workers.start(settings, "q")
    workers.start(settings, "q")
    with Client(redis_server.url) as client:
        wait_for(lambda: _registered(rconn, 2), what="workers registered")
        jobs = client.submit_many("q", list(range(5)))
        assert [j.result(timeout_s=20) for j in jobs] == list(range(5))
        assert {j.outcome().attempts for j in jobs} == {1}  # never reclaimed, never run twice


def test_a_killed_workers_batch_is_reclaimed_by_another(redis_server, rconn, workers):
    settings = make_settings(redis_server.url, q={
        "handler": "sleep", "max_batch": 10, "visibility_timeout_ms": 300,
        "handler_options": {"ms_per_batch": 3000}})
    first = workers.start(settings, "q")
    with Client(redis_server.url) as client:
        wait_for(lambda: _registered(rconn, 1), what="worker registered")
        jobs = client.submit_many("q", list(range(10)))
        wait_for(lambda: _pending(rconn, "q") == 10, what="the batch taken")
        first.send_signal(signal.SIGKILL)
        first.wait(5)
        fast = settings.model_copy(update={"queues": {"q": settings.queues["q"].model_copy(
            update={"handler_options": {"ms_per_batch": 1}})}})
        workers.start(fast, "q")
        assert [j.result(timeout_s=30) for j in jobs] == list(range(10))
        assert {j.outcome().attempts for j in jobs} == {2}
    assert _pending(rconn, "q") == 0


def test_idempotency_key_returns_the_first_job(redis_server, rconn, workers):
    settings = make_settings(redis_server.url, q={"handler": "echo"})
    workers.start(settings, "q")
    with Client(redis_server.url) as client:
        wait_for(lambda: _registered(rconn, 1), what="worker registered")
        first = client.submit("q", "once", idempotency_key="order-42")
        again = client.submit("q", "twice", idempotency_key="order-42")
        assert again.id == first.id
        assert again.result(timeout_s=10) == "once"
    assert rconn.xlen(keys.jobs("q")) <= 1


def test_missing_group_is_recreated_and_work_goes_on(redis_server, rconn, workers):
    settings = make_settings(redis_server.url, q={"handler": "echo", "block_ms": 200})
    workers.start(settings, "q")
    with Client(redis_server.url) as client:
        wait_for(lambda: _registered(rconn, 1), what="worker registered")
        assert client.submit("q", 1).result(timeout_s=10) == 1
        rconn.delete(keys.jobs("q"))  # as a flush or a failover without persistence would
        wait_for(lambda: rconn.exists(keys.jobs("q")), what="the group re-created")
        assert client.submit("q", 2).result(timeout_s=10) == 2


def test_worker_and_client_survive_a_redis_restart(tmp_path, workers):
    server = RedisServer(tmp_path / "r", appendfsync="always").start()
    try:
        settings = make_settings(server.url, q={"handler": "echo", "block_ms": 500})
        proc = workers.start(settings, "q")
        with Client(server.url) as client:
            conn = redis.Redis.from_url(server.url)
            wait_for(lambda: _registered(conn, 1), what="worker registered")
            assert client.submit("q", "before").result(timeout_s=10) == "before"
            server.kill()
            server.start()
            job = client.submit("q", "after")
            assert job.result(timeout_s=30) == "after"
            assert proc.poll() is None
            conn.close()
    finally:
        server.stop()


def test_with_aof_always_a_submitted_job_survives_sigkill_of_redis(tmp_path):
    server = RedisServer(tmp_path / "r", appendfsync="always").start()
    try:
        conn = redis.Redis.from_url(server.url)
        conn.hset(keys.QUEUES, "q", codec.QueueInfo("q", "echo", 1000, 10_000, 60).encode())
        with Client(server.url, reply=False) as client:
            ids = [client.submit("q", i).id for i in range(300)]
        server.kill()
        server.start()
        conn = redis.Redis.from_url(server.url)
        assert [e[0].decode() for e in conn.xrange(keys.jobs("q"))] == ids
        conn.close()
    finally:
        server.stop()


def test_trim_never_drops_a_pending_entry(redis_server, rconn, workers):
    settings = make_settings(redis_server.url, q={"handler": "echo", "visibility_timeout_ms": 600_000})
    workers.start(settings, "q")
    with Client(redis_server.url) as client:
        wait_for(lambda: _registered(rconn, 1), what="worker registered")
        assert client.map("q", list(range(1000)), timeout_s=30) == list(range(1000))
        workers.stop_all()
        ghost = client.submit("q", "held by a dead consumer")
        rconn.xreadgroup(keys.GROUP, "ghost", {keys.jobs("q"): ">"}, count=1)
        workers.start(settings, "q")
        assert client.map("q", list(range(1000)), timeout_s=30) == list(range(1000))
        wait_for(lambda: rconn.xlen(keys.jobs("q")) < 1500, timeout_s=15, what="the stream trimmed")
    assert rconn.xrange(keys.jobs("q"), ghost.id, ghost.id)  # still there, still pending
    assert _pending(rconn, "q") == 1


@pytest.mark.timeout(240)
def test_consumer_list_stays_bounded_over_200_restarts(redis_server, rconn, workers):
    settings = make_settings(redis_server.url, q={"handler": "echo", "visibility_timeout_ms": 200,
                                                  "block_ms": 100})
    publish_queues(rconn, settings)
    with Client(redis_server.url) as client:
        for i in range(200):
            proc = workers.start(settings, "q")
            assert client.submit("q", i).result(timeout_s=20) == i  # it is a consumer now
            proc.send_signal(signal.SIGKILL if i % 2 else signal.SIGTERM)
            proc.wait(10)
            rconn.hdel(keys.WORKERS, proc.worker_id)  # a killed worker's entry goes with its supervisor
        workers.start(settings, "q")
        assert client.submit("q", "last").result(timeout_s=20) == "last"
    wait_for(lambda: len(rconn.xinfo_consumers(keys.jobs("q"), keys.GROUP)) <= 2, timeout_s=15,
             what="dead consumers deleted")
