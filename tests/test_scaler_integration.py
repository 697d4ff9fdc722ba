"""The scaler daemon end to end: a real redis-server, a real ScalerLoop and Supervisor
in a thread, real `sleep` workers. Plus the daemon's pure assembly helpers."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from fleet import codec, keys
from fleet.cli import main
from fleet.cli.up import running_fleet
from fleet.client import Client
from fleet.settings import FleetSettings, QueueSettings
from scaler.daemon import LocalWorker, decide_on_devices, fixed_overrides, worker_views
from scaler.model import DeviceView, PolicyState, QueuePolicy, QueueSnapshot, ScaleOverride, Snapshot
from scaler.signals import WorkerRecord
from tests.conftest import wait_for

QUEUE = "q"


def fleet_settings(url: str, tmp_path: Path, autoscale: bool = True, **queue: object) -> FleetSettings:
    q: dict[str, object] = {
        "handler": "sleep", "handler_options": {"ms_per_batch": 20}, "max_batch": 10, "max_delay_ms": 2,
        "backlog_per_worker": 50, "stabilization_s": 3, "scale_up_cooldown_s": 1, "device": "cpu",
        "max_workers_per_device": 8, "min_workers": 1, "max_workers": 6, "block_ms": 500,
    }
    q.update(queue)
    return FleetSettings(
        redis={"url": url},  # type: ignore[arg-type]
        queues={QUEUE: QueueSettings(**q)},  # type: ignore[arg-type]
        worker={"heartbeat_interval_s": 0.2, "drain_timeout_s": 30},  # type: ignore[arg-type]
        scaler={"tick_s": 0.2, "use_cgroups": False, "autoscale": autoscale},  # type: ignore[arg-type]
        state_dir=tmp_path / "state",
    )


def registered(conn: redis.Redis, state: str | None = None) -> int:
    entries = [codec.unpack(v) for v in conn.hvals(keys.WORKERS)]
    return sum(1 for e in entries if e["queue"] == QUEUE and (state is None or e["state"] == state))


def executions(trace_dir: Path) -> Counter[str]:
    """The `sleep` handler's trace: one "<payload> <pid>" line per executed item."""
    lines = [line for f in trace_dir.glob("*.log") for line in f.read_text().splitlines()]
    return Counter(line.split()[0] for line in lines)


@pytest.mark.timeout(180)
def test_burst_scales_to_max_drains_and_returns_to_min(redis_server, rconn, tmp_path):
    trace_dir = tmp_path / "trace"
    trace_dir.mkdir()
    settings = fleet_settings(redis_server.url, tmp_path,
                              handler_options={"ms_per_batch": 20, "trace_dir": str(trace_dir)})
    with running_fleet(settings) as fleet:
        sup = fleet.supervisor
        wait_for(lambda: registered(rconn, "idle") == 1, 30, "the min worker idle")
        with Client(redis_server.url) as client:
            payloads = list(range(3000))
            jobs = client.submit_many(QUEUE, payloads)
            wait_for(lambda: sup.count(QUEUE) == 6, 30, "six workers")
            outcomes = client.wait_outcomes(QUEUE, [j.id for j in jobs], 120)
        wait_for(lambda: len(sup.workers) == 1 and registered(rconn) == 1, 60, "back to one worker")
        exited = list(fleet.loop.exited)
    assert [outcomes[j.id].value for j in jobs] == payloads
    assert all(o.status == "ok" and o.attempts == 1 for o in outcomes.values())
    runs = executions(trace_dir)
    assert len(runs) == 3000 and set(runs.values()) == {1}, "a job ran twice"
    pipe = rconn.pipeline(transaction=False)
    for j in jobs:
        pipe.exists(keys.result(QUEUE, j.id))
    assert sum(pipe.execute()) == 3000
    info = rconn.xinfo_groups(keys.jobs(QUEUE))[0]
    assert (info["pending"], info["entries-read"]) == (0, 3000)
    assert len(exited) == 5 and all(not e.crashed and e.returncode == 0 for e in exited), exited
    assert len({o.worker for o in outcomes.values()}) > 1  # the new workers took part


@pytest.mark.timeout(180)
def test_scale_replicas_pins_within_two_ticks_and_auto_hands_back(redis_server, rconn, tmp_path):
    url = redis_server.url
    settings = fleet_settings(url, tmp_path)
    runner = CliRunner()
    with running_fleet(settings) as fleet:
        sup, loop = fleet.supervisor, fleet.loop
        wait_for(lambda: registered(rconn, "idle") == 1, 30, "the min worker idle")
        result = runner.invoke(main, ["--redis-url", url, "scale", QUEUE, "--replicas", "3"])
        assert result.exit_code == 0, result.output
        ticks = loop.ticks
        wait_for(lambda: sup.count(QUEUE) == 3, 10, "three workers")
        assert loop.ticks - ticks <= 2
        wait_for(lambda: registered(rconn, "idle") == 3, 30, "three idle workers")
        plan = runner.invoke(main, ["--redis-url", url, "scale", QUEUE, "--auto", "--dry-run", "--json"])
        assert plan.exit_code == 0, plan.output
        assert json.loads(plan.output)["current"] == 3
        status = subprocess.run(
            [str(Path(sys.executable).parent / "fleet"), "--redis-url", url, "status", "--json"],
            capture_output=True, text=True, timeout=60, check=True,
        )
        data = json.loads(status.stdout)
        (row,) = [r for r in data["queues"] if r["queue"] == QUEUE]
        assert (row["workers"], row["desired"], row["mode"]) == (3, 3, "pinned")
        assert len(data["workers"]) == 3
        result = runner.invoke(main, ["--redis-url", url, "scale", QUEUE, "--auto"])
        assert result.exit_code == 0, result.output
        wait_for(lambda: sup.count(QUEUE) == 1, 30, "autoscaled back to min")
        assert rconn.hget(keys.SCALE, QUEUE) is None


@pytest.mark.timeout(120)
def test_fixed_count_mode_keeps_workers_and_honours_a_pin(redis_server, rconn, tmp_path):
    settings = fleet_settings(redis_server.url, tmp_path, autoscale=False, workers=2)
    with running_fleet(settings) as fleet:
        wait_for(lambda: registered(rconn, "idle") == 2, 30, "two idle workers")
        decided = codec.unpack(wait_for(lambda: rconn.hget(keys.DECISIONS, QUEUE), 10, "a decision"))
        assert (decided["reason"], decided["mode"]) == ("FixedCount", "fixed")
        rconn.hset(keys.SCALE, QUEUE, codec.pack({"replicas": 1, "min": None, "max": None}))
        wait_for(lambda: fleet.supervisor.count(QUEUE) == 1, 10, "pinned at one")


# -- the daemon's pure helpers ----------------------------------------------------------

def test_worker_views_merge_local_workers_with_other_hosts_entries():
    local = [LocalWorker("a", QUEUE, "cpu", 10.0, retiring=False),
             LocalWorker("b", QUEUE, "cpu", 11.0, retiring=True),
             LocalWorker("c", QUEUE, "cpu", 12.0, retiring=False)]
    records = {
        "a": WorkerRecord("a", QUEUE, "cpu", "busy", "h1", started_ms=10_000, last_busy_ms=20_000),
        "b": WorkerRecord("b", QUEUE, "cpu", "idle", "h1", started_ms=11_000),
        "x": WorkerRecord("x", QUEUE, "sim-0", "idle", "h2", started_ms=5_000),
        "y": WorkerRecord("y", "other", "cpu", "idle", "h2"),
    }
    views = {v.id: v for v in worker_views(QUEUE, local, records)}
    states = {i: v.state for i, v in views.items()}
    assert states == {"a": "busy", "b": "draining", "c": "starting", "x": "idle"}
    assert views["c"].started_s == 12.0 and views["a"].last_busy_s == 20.0


def test_fixed_mode_pins_each_queue_at_its_workers_unless_scaled():
    settings = FleetSettings(queues={"a": QueueSettings(handler="echo", workers=2),
                                     "b": QueueSettings(handler="echo", workers=4)})
    out = fixed_overrides(settings, {"b": ScaleOverride(replicas=1)})
    assert (out["a"].replicas, out["b"].replicas) == (2, 1)


def test_queues_are_placed_only_on_their_own_devices():
    queues = {"gpu": QueueSnapshot("gpu", lag=500), "cpu": QueueSnapshot("cpu", lag=500)}
    snap = Snapshot(now_s=100.0, queues=queues,
                    devices=(DeviceView("cpu"), DeviceView("sim-0"), DeviceView("sim-1")))
    policy = QueuePolicy(backlog_per_worker=100, max_workers_per_device=2)
    decision = decide_on_devices(snap, PolicyState(), {"gpu": policy, "cpu": policy},
                                 {"gpu": frozenset({"sim-0", "sim-1"}), "cpu": frozenset({"cpu"})})
    assert set(decision.queues["gpu"].add_devices) == {"sim-0", "sim-1"}
    assert decision.queues["gpu"].add == 4
    assert set(decision.queues["cpu"].add_devices) == {"cpu"}
    assert decision.queues["cpu"].add == 2
