"""`fleet scale` and `fleet status` through click's CliRunner against a real
redis-server, with registry entries and decisions written by the test."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from fleet import codec, keys
from fleet.cli import main
from fleet.cli.common import EXIT_FAILURE, EXIT_USAGE
from fleet.cli.scale import new_override
from fleet.cli.status import render
from scaler.model import ScaleOverride


def _declare(conn, queue="q"):
    conn.hset(keys.QUEUES, queue, codec.QueueInfo(queue, "sleep", 1 << 20, 1000, 60).encode())
    conn.xgroup_create(keys.jobs(queue), keys.GROUP, id="0", mkstream=True)


def _worker(conn, worker_id, state="idle", queue="q", device="cpu", host="h1"):
    now_ms = int(time.time() * 1000)
    conn.hset(keys.WORKERS, worker_id, codec.pack({
        "queue": queue, "device": device, "state": state, "pid": 1, "host": host, "started_ms": now_ms,
        "beat_ms": now_ms, "last_busy_ms": None, "load_s": 0.1, "done": 7, "failed": 0,
    }))


def cli(url, *args):
    return CliRunner().invoke(main, ["--redis-url", url, *args])


@pytest.mark.parametrize(("args", "expected"), [
    ((3, None, None, False), ScaleOverride(3, 1, 9)),
    ((None, 2, None, False), ScaleOverride(None, 2, 9)),
    ((None, None, 4, False), ScaleOverride(None, 1, 4)),
    ((None, None, None, True), None),
])
def test_new_override(args, expected):
    assert new_override(ScaleOverride(5, 1, 9), *args) == expected


def test_scale_writes_the_override_and_auto_removes_it(redis_server, rconn):
    _declare(rconn)
    result = cli(redis_server.url, "scale", "q", "--replicas", "3")
    assert result.exit_code == 0, result.output
    assert "pinned at 3" in result.output
    assert codec.unpack(rconn.hget(keys.SCALE, "q")) == {"replicas": 3, "min": None, "max": None}
    assert cli(redis_server.url, "scale", "q", "--min", "2", "--max", "5").exit_code == 0
    assert codec.unpack(rconn.hget(keys.SCALE, "q")) == {"replicas": None, "min": 2, "max": 5}
    assert cli(redis_server.url, "scale", "q", "--auto").exit_code == 0
    assert rconn.hget(keys.SCALE, "q") is None


@pytest.mark.parametrize("args", [
    ("--replicas", "2", "--auto"), ("--min", "5", "--max", "2"), (), ("--replicas", "-1"),
])
def test_scale_rejects_contradictions_as_usage_errors(redis_server, rconn, args):
    _declare(rconn)
    result = cli(redis_server.url, "scale", "q", *args)
    assert result.exit_code == EXIT_USAGE
    assert rconn.hget(keys.SCALE, "q") is None


def test_scale_of_an_unknown_queue_is_one_clear_line(redis_server):
    result = cli(redis_server.url, "scale", "nope", "--replicas", "1")
    assert result.exit_code == EXIT_FAILURE
    assert "unknown queue 'nope'" in result.output


def test_dry_run_explains_and_writes_nothing(redis_server, rconn):
    _declare(rconn)
    for i in range(120):
        rconn.xadd(keys.jobs("q"), {"p": codec.pack(i)})
    _worker(rconn, "w1")
    result = cli(redis_server.url, "scale", "q", "--replicas", "4", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "queue q: 1 -> 4 workers (Pinned)" in result.output
    assert "backlog 120" in result.output
    plan = json.loads(cli(redis_server.url, "scale", "q", "--dry-run", "--json").output)
    # not in any config here: the default policy (5000 per worker) holds at 1
    got = (plan["current"], plan["desired"], plan["lag"], plan["reason"])
    assert got == (1, 1, 120, "DesiredWithinRange")
    assert rconn.hget(keys.SCALE, "q") is None


def test_status_json_and_tables_fit_80_columns(redis_server, rconn):
    _declare(rconn, "embeddings-multilingual-large")
    for i in range(30):
        rconn.xadd(keys.jobs("embeddings-multilingual-large"), {"p": codec.pack(i)})
    long_id = "embeddings-multilingual-large.nvidia-GPU-8d1f2c3a-1111-2222-3333-444455556666.4242.abcdef"
    _worker(rconn, long_id, "busy", "embeddings-multilingual-large", "nvidia-GPU-8d1f2c3a", "gpu-host-7")
    _worker(rconn, "stale", "idle", "embeddings-multilingual-large")
    rconn.hset(keys.WORKERS, "stale", codec.pack({"queue": "embeddings-multilingual-large", "state": "idle",
                                                  "beat_ms": 1}))
    rconn.hset(keys.DECISIONS, "embeddings-multilingual-large", codec.pack({
        "desired": 2, "current": 1, "reason": "DevicesSaturated", "at_ms": int(time.time() * 1000),
        "mode": "auto", "rate_per_s": 12.5}))
    result = cli(redis_server.url, "status", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    (q,) = data["queues"]
    assert (q["backlog"], q["workers"], q["desired"], q["reason"], q["rate_per_s"]) == (
        30, 1, 2, "DevicesSaturated", 12.5)
    assert [w["id"] for w in data["workers"]] == [long_id]  # the silent one is not counted
    assert data["devices"][0]["workers"] == {"busy": 1}
    text = cli(redis_server.url, "status").output
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "DevicesSaturated" in text and "1/2" in text


def test_status_watch_is_bounded_by_count(redis_server, rconn):
    _declare(rconn)
    result = cli(redis_server.url, "status", "--watch", "--interval", "0.2", "--count", "2", "--json")
    assert result.exit_code == 0, result.output
    assert result.output.count('"queues"') == 2


def test_render_of_an_empty_fleet():
    text = render({"queues": [], "devices": [], "workers": []})
    assert "QUEUE" in text and "DEVICE" in text and "WORKER" in text
