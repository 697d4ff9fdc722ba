"""Jobs through real worker processes and a real redis-server."""

from __future__ import annotations

import signal

import pytest
import redis

from fleet import keys
from fleet.client import Client
from fleet.errors import JobFailed, PayloadTooLarge, UnknownQueue
from tests.conftest import make_settings, wait_for


def _registered(conn: redis.Redis, n: int) -> bool:
    return conn.hlen(keys.WORKERS) >= n


def test_map_returns_every_value_in_order_and_no_job_runs_twice(redis_server, rconn, workers):
    settings = make_settings(redis_server.url, echo={"handler": "echo", "max_batch": 50})
    first, second = workers.start(settings, "echo"), workers.start(settings, "echo")
    wait_for(lambda: _registered(rconn, 2), what="two workers registered")
    payloads = [{"i": i, "s": f"job-{i}"} for i in range(1000)]
    with Client(redis_server.url) as client:
        assert client.map("echo", payloads, timeout_s=30) == payloads
        jobs = client.submit_many("echo", payloads)
        outcomes = client.wait_outcomes("echo", [j.id for j in jobs], 30)
    # each job delivered once: every outcome is a first attempt, the group read each
    # entry once and holds nothing, and both workers took part
    assert {o.attempts for o in outcomes.values()} == {1}
    assert {o.worker for o in outcomes.values()} <= {first.worker_id, second.worker_id}
    info = rconn.xinfo_groups(keys.jobs("echo"))[0]
    assert info["pending"] == 0 and info["entries-read"] == 2000


def test_unknown_queue_and_payload_too_large_write_nothing(redis_server, rconn, workers):
    settings = make_settings(redis_server.url, small={"handler": "echo", "max_payload_bytes": 100})
    workers.start(settings, "small")
    wait_for(lambda: _registered(rconn, 1), what="worker registered")
    with Client(redis_server.url) as client:
        with pytest.raises(UnknownQueue):
            client.submit("nope", "x")
        with pytest.raises(PayloadTooLarge):
            client.submit("small", "x" * 200)
        with pytest.raises(PayloadTooLarge):
            client.submit_many("small", ["ok", "x" * 200])
        assert rconn.xlen(keys.jobs("small")) == 0
        assert client.submit("small", "ok").result(timeout_s=10) == "ok"


def test_sigterm_mid_batch_finishes_every_job(redis_server, rconn, workers):
    settings = make_settings(
        redis_server.url,
        slow={"handler": "sleep", "max_batch": 20, "handler_options": {"ms_per_batch": 400}},
    )
    proc = workers.start(settings, "slow")
    wait_for(lambda: _registered(rconn, 1), what="worker registered")
    with Client(redis_server.url) as client:
        jobs = client.submit_many("slow", list(range(20)))
        wait_for(lambda: rconn.xinfo_groups(keys.jobs("slow"))[0]["pending"] == 20, what="batch taken")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert [job.result(timeout_s=5) for job in jobs] == list(range(20))
    assert rconn.xinfo_groups(keys.jobs("slow"))[0]["pending"] == 0
    assert rconn.hlen(keys.WORKERS) == 0


def test_failed_job_fails_alone(redis_server, rconn, workers):
    settings = make_settings(redis_server.url, echo={"handler": "echo", "max_batch": 10})
    with Client(redis_server.url) as client:
        workers.start(settings, "echo")
        wait_for(lambda: _registered(rconn, 1), what="worker registered")
        # an entry Fleet did not write, between good ones
        good = client.submit_many("echo", [1, 2])
        rconn.xadd(keys.jobs("echo"), {"p": b"\xc1", "reply": client.reply_key})
        bad_id = rconn.xrevrange(keys.jobs("echo"), count=1)[0][0].decode()
        more = client.submit_many("echo", [3])
        assert [j.result(timeout_s=10) for j in good + more] == [1, 2, 3]
        with pytest.raises(JobFailed, match="malformed job"):
            client.job("echo", bad_id).result(timeout_s=10)
