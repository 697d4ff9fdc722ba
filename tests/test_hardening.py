"""Findings of an adversarial run, each pinned by a test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from fleet import keys
from fleet.client import Client
from fleet.errors import ClientClosed, FleetError, JobTimeout
from tests.conftest import make_settings, wait_for

pytestmark = pytest.mark.timeout(120)


def _registered(conn: redis.Redis, n: int) -> bool:
    return conn.hlen(keys.WORKERS) >= n


def test_out_of_memory_never_acks_without_an_outcome(redis_server, rconn, workers):
    settings = make_settings(redis_server.url, q={
        "handler": "sleep", "max_batch": 3, "handler_options": {"ms_per_batch": 1000}})
    proc = workers.start(settings, "q")
    with Client(redis_server.url) as client:
        wait_for(lambda: _registered(rconn, 1), what="worker registered")
        jobs = client.submit_many("q", [1, 2, 3])
        wait_for(lambda: rconn.xpending(keys.jobs("q"), keys.GROUP)["pending"] == 3, what="batch taken")
        used = int(rconn.info("memory")["used_memory"])
        rconn.config_set("maxmemory-policy", "noeviction")
        rconn.config_set("maxmemory", used // 2)  # every write refused, nothing evicted
        time.sleep(2.0)  # the batch ends while Redis refuses writes: it must not be acked
        assert rconn.xpending(keys.jobs("q"), keys.GROUP)["pending"] == 3
        assert not any(rconn.exists(keys.result("q", j.id)) for j in jobs)
        assert proc.poll() is None  # backing off, not crashed
        rconn.config_set("maxmemory", 0)
        assert [j.result(timeout_s=30) for j in jobs] == [1, 2, 3]
    assert rconn.xpending(keys.jobs("q"), keys.GROUP)["pending"] == 0


def test_a_reply_key_of_the_wrong_type_fails_nothing_else(redis_server, rconn, workers):
    settings = make_settings(redis_server.url, q={"handler": "echo", "max_batch": 10})
    proc = workers.start(settings, "q")
    with Client(redis_server.url) as client:
        wait_for(lambda: _registered(rconn, 1), what="worker registered")
        rconn.set(keys.reply("victim"), "not a stream")
        rconn.xadd(keys.jobs("q"), {"p": b"\xa6poison", "reply": keys.reply("victim")})
        assert client.map("q", list(range(20)), timeout_s=20) == list(range(20))
        assert proc.poll() is None


def test_reply_false_client_waits_by_looking_at_result_keys(redis_server, rconn, workers):
    settings = make_settings(redis_server.url, q={"handler": "echo"})
    workers.start(settings, "q")
    wait_for(lambda: _registered(rconn, 1), what="worker registered")
    with Client(redis_server.url, reply=False) as client:
        assert client.submit("q", "polled").result() == "polled"  # no timeout: must not hang


def test_map_with_return_exceptions_keeps_what_arrived(redis_server, rconn, workers):
    settings = make_settings(redis_server.url, q={"handler": "echo"})
    workers.start(settings, "q")
    wait_for(lambda: _registered(rconn, 1), what="worker registered")
    with Client(redis_server.url) as client:
        assert client.map("q", [1, 2], timeout_s=10) == [1, 2]
        workers.stop_all()
        values = client.map("q", [3], timeout_s=0.3, return_exceptions=True)
        assert isinstance(values[0], JobTimeout)


def test_closed_client_refuses_to_submit_and_bad_queue_info_is_a_fleet_error(redis_server, rconn):
    rconn.hset(keys.QUEUES, "badq", b"garbage")
    client = Client(redis_server.url)
    with pytest.raises(FleetError, match="unreadable settings"):
        client.submit("badq", 1)
    client.close()
    with pytest.raises(ClientClosed):
        client.submit("badq", 1)


def _fleet_up(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "fleet.cli", "-c", str(cfg), "up"], stdout=out,
                                stderr=out, cwd=cfg.parent, start_new_session=True)


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\nqueues:\n  echo:\n    handler: echo\n"
                   "    workers: 1\n    device: cpu\nworker:\n  heartbeat_interval_s: 0.2\n"
                   "scaler:\n  tick_s: 0.2\n  autoscale: false\n  use_cgroups: false\n")
    return cfg


def _private_url(tmp_path: Path):
    from fleet.runtime import resolve_redis
    from fleet.settings import load_settings

    return resolve_redis(load_settings(tmp_path / "fleet.yaml")).redis


def test_second_fleet_up_in_the_same_state_dir_is_refused(tmp_path):
    cfg = _config(tmp_path)
    first = _fleet_up(cfg, tmp_path / "first.log")
    try:
        wait_for(lambda: (tmp_path / "state" / "redis.json").exists(), what="first fleet up")
        second = subprocess.run([sys.executable, "-m", "fleet.cli", "-c", str(cfg), "up"],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert "another `fleet up`" in second.stderr and "Traceback" not in second.stderr
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGINT)
        assert first.wait(30) == 0


def test_fleet_up_after_a_sigkill_reuses_its_redis_and_adopts_its_workers(tmp_path):
    cfg = _config(tmp_path)
    first = _fleet_up(cfg, tmp_path / "first.log")
    try:
        wait_for(lambda: (tmp_path / "state" / "redis.json").exists(), what="first fleet up")
        rs = _private_url(tmp_path)
        conn = redis.Redis.from_url(rs.url, password=rs.resolved_password())
        wait_for(lambda: _registered(conn, 1), what="worker registered")
        worker_pid = int(__import__("msgpack").unpackb(conn.hvals(keys.WORKERS)[0])["pid"])
        first.kill()
        first.wait(10)
        second = _fleet_up(cfg, tmp_path / "second.log")
        with Client(rs) as client:
            assert client.submit("echo", "still here").result(timeout_s=30) == "still here"
        time.sleep(1.0)  # several ticks: an adopted worker is not duplicated
        assert conn.hlen(keys.WORKERS) == 1
        os.kill(worker_pid, 0)  # the same worker serves
        second.send_signal(signal.SIGINT)
        assert second.wait(30) == 0
        wait_for(lambda: not Path(f"/proc/{worker_pid}").exists() or
                 Path(f"/proc/{worker_pid}/stat").read_text().split()[2] == "Z", what="worker stopped")
        conn.close()
    finally:
        for p in (first,):
            if p.poll() is None:
                p.kill()
