"""Supervised workers on this host's real cgroup2 mount: leaves, device programs,
forced retirement through cgroup.kill, placement over simulated GPUs, and the
degraded mode (no cgroup2) that still runs workers."""

from __future__ import annotations

import functools
import logging
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from fleet import keys
from fleet.client import Client
from fleet.redis_server import RedisServer
from fleet.settings import FleetSettings
from scheduler.adopt import decode_registry, start_ticks
from scheduler.bpf_devices import attached_programs
from scheduler.cgroups import SliceManager, leaf_of_pid
from scheduler.devices import Device, SimBackend
from scheduler.placement import DeviceLoad, PlacementNeed, place
from scheduler.spawn import open_slice_manager
from scheduler.supervisor import ManagedWorker, Supervisor, host_statuses
from tests.conftest import make_settings, wait_for

SIM = SimBackend(4).discover()


@pytest.fixture
def slices(slice_manager: SliceManager) -> SliceManager:
    return slice_manager


@pytest.fixture
def supervise(tmp_path: Path, rconn: redis.Redis) -> Iterator[list[Supervisor]]:
    made: list[Supervisor] = []
    yield made
    for sup in made:
        sup.stop_all(drain_timeout_s=2.0)


def _supervisor(settings: FleetSettings, slices: SliceManager | None, tmp_path: Path,
                made: list[Supervisor]) -> Supervisor:
    sup = Supervisor(settings, slices, log_dir=tmp_path / "logs")
    made.append(sup)
    return sup


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _state(conn: redis.Redis, worker: ManagedWorker) -> str | None:
    entry = decode_registry(conn.hgetall(keys.WORKERS)).get(worker.worker_id)
    return entry["state"] if entry else None


def _in_leaf(pid: int, want: str) -> bool:
    return leaf_of_pid(pid) == want


def test_worker_runs_in_its_leaf_with_the_device_program(
    redis_server: RedisServer, rconn: redis.Redis, slices: SliceManager, tmp_path: Path,
    supervise: list[Supervisor],
) -> None:
    settings = make_settings(redis_server.url, echo={"handler": "echo", "device": "sim:4"})
    sup = _supervisor(settings, slices, tmp_path, supervise)
    worker = sup.spawn("echo", SIM[2])
    assert worker.leaf is not None
    want = f"/{slices.base}/sim-2/{worker.worker_id}"
    wait_for(lambda: leaf_of_pid(worker.pid) == want, 10, "the shell enters the leaf")
    assert worker.isolation.ok, worker.isolation.reason
    assert attached_programs(worker.leaf.path) == 1
    assert _environ(worker.pid)["FLEET_SIM_VISIBLE_DEVICES"] == "SIM-GPU-2"
    wait_for(lambda: _state(rconn, worker) == "idle", 30, "worker serving")
    with Client(redis_server.url) as client:  # isolated, and still serving
        assert client.submit("echo", [1, 2]).result(timeout_s=30) == [1, 2]
    assert sup.isolation_status().ok


def test_retire_past_deadline_kills_the_leaf_and_removes_it(
    redis_server: RedisServer, rconn: redis.Redis, slices: SliceManager, tmp_path: Path,
    supervise: list[Supervisor],
) -> None:
    settings = make_settings(redis_server.url, slow={"handler": "sleep",
                                                     "handler_options": {"ms_per_batch": 600_000}})
    sup = _supervisor(settings, slices, tmp_path, supervise)
    worker = sup.spawn("slow", SIM[0])
    assert worker.leaf is not None
    leaf = worker.leaf
    # a child the worker started (a data loader, say) sits in its leaf too
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (leaf.path / "cgroup.procs").write_text(str(child.pid))
        wait_for(lambda: _state(rconn, worker) == "idle", 30, "worker serving")
        with Client(redis_server.url) as client:
            client.submit("slow", "never finishes")
        wait_for(lambda: _state(rconn, worker) == "busy", 30, "worker busy mid-batch")
        sup.retire(worker.worker_id, drain_timeout_s=0.2)
        exited = wait_for(sup.reap, 20, "forced exit")
        assert exited[0].worker_id == worker.worker_id and not exited[0].crashed
        assert child.wait(10) == -9  # killed with the worker's cgroup
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert start_ticks(worker.pid) is None
    assert not leaf.path.exists() and not leaf.path.parent.exists()  # leaf and device dir
    assert sup.workers == {}


def test_eight_workers_spread_over_four_sim_gpus(
    redis_server: RedisServer, slices: SliceManager, tmp_path: Path, supervise: list[Supervisor],
) -> None:
    settings = make_settings(redis_server.url, echo={"handler": "echo", "device": "sim:4",
                                                     "max_workers_per_device": 2})
    sup = _supervisor(settings, slices, tmp_path, supervise)
    by_id = {d.id: d for d in SIM}
    need = PlacementNeed(max_workers_per_device=2)
    for _ in range(8):
        counts = Counter(w.device.id for w in sup.workers.values())
        loads = [DeviceLoad(d.id, d.uuid, counts[d.id], 0, 0, d.memory_total_bytes) for d in SIM]
        placed = place(loads, need).device_id
        assert placed is not None
        sup.spawn("echo", by_id[placed])
    counts = Counter(w.device.id for w in sup.workers.values())
    assert counts == {d.id: 2 for d in SIM}
    loads = [DeviceLoad(d.id, d.uuid, 2, 0, 0, d.memory_total_bytes) for d in SIM]
    assert place(loads, need).device_id is None  # full
    for w in sup.workers.values():
        want = f"/{slices.base}/{w.device.id}/{w.worker_id}"
        wait_for(functools.partial(_in_leaf, w.pid, want), 10, "worker in its leaf")
        assert _environ(w.pid)["FLEET_SIM_VISIBLE_DEVICES"] == w.device.uuid
        assert w.isolation.ok
    sup.stop_all(drain_timeout_s=10)
    assert slices.leaves() == []


def test_without_cgroup2_workers_still_run_and_say_why(
    redis_server: RedisServer, rconn: redis.Redis, tmp_path: Path, supervise: list[Supervisor],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(redis_server.url, echo={"handler": "echo"})
    caplog.set_level(logging.WARNING, logger="fleet.scheduler")
    slices = open_slice_manager(tmp_path, base="fleet.slice")
    assert not slices.available
    sup = _supervisor(settings, slices, tmp_path, supervise)
    sup.conn = rconn
    worker = sup.spawn("echo", Device("cpu", "cpu", 0, None, "cpu", None))
    assert worker.leaf is None and not worker.isolation.ok
    assert f"not a cgroup2 hierarchy: {tmp_path}" in worker.isolation.reason
    assert f"cgroup v2 unavailable (not a cgroup2 hierarchy: {tmp_path})" in caplog.text
    wait_for(lambda: _state(rconn, worker) == "idle", 30, "worker serving")
    with Client(redis_server.url) as client:
        assert client.submit("echo", "plain").result(timeout_s=30) == "plain"
    sup.publish_host_status()
    status = host_statuses(rconn)[sup.host]
    assert status["cgroups"] == {"available": False, "reason": f"not a cgroup2 hierarchy: {tmp_path}"}
    assert status["isolation"]["on"] is False and "no cgroup leaves" in status["isolation"]["reason"]
    assert not (tmp_path / "fleet.slice").exists()
