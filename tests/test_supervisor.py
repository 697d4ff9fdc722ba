"""The supervisor with real worker processes and a real redis-server: crash loops
back off while other queues serve, adoption of workers a scaler left running,
and the host status in ``fleet:hosts``."""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from fleet import codec, keys
from fleet.client import Client
from fleet.redis_server import RedisServer
from scheduler.adopt import UNKNOWN_RC, AdoptedProcess, decode_registry, find_adoptable, start_ticks
from scheduler.cgroups import cgroup2_root, leaf_of_pid
from scheduler.devices import Device
from scheduler.supervisor import ManagedWorker, Supervisor, host_statuses, restart_delay_s
from tests.conftest import WorkerProcs, make_settings, wait_for

CPU = Device("cpu", "cpu", 0, None, "cpu", None)
HOST = socket.gethostname()


@pytest.mark.parametrize(
    ("crashes", "want"),
    [(0, 0.0), (1, 0.5), (2, 1.0), (3, 2.0), (8, 60.0), (30, 60.0)],
    ids=["no crash", "first", "second doubles", "third doubles", "capped", "far past the cap"],
)
def test_restart_delay_grows_and_is_capped(crashes: int, want: float) -> None:
    assert restart_delay_s(crashes) == want


def tick(sup: Supervisor, want: dict[str, int], spawned: dict[str, list[float]]) -> bool:
    """What the scaler does each tick, without its policy: reap, then fill up."""
    sup.reap()
    now = time.monotonic()
    for queue, n in want.items():
        if sup.count(queue) < n and sup.can_spawn(queue, now):
            sup.spawn(queue, CPU)
            spawned.setdefault(queue, []).append(now)
    return True


@pytest.fixture
def supervisors() -> Iterator[list[Supervisor]]:
    made: list[Supervisor] = []
    yield made
    for sup in made:
        sup.stop_all(drain_timeout_s=2.0)


def test_crash_loop_backs_off_while_another_queue_serves(
    redis_server: RedisServer, rconn: redis.Redis, tmp_path: Path, supervisors: list[Supervisor]
) -> None:
    settings = make_settings(
        redis_server.url,
        crash={"handler": "sleep", "handler_options": {"exit_on_load": 3}},
        echo={"handler": "echo", "max_delay_ms": 0},
    )
    sup = Supervisor(settings, None, log_dir=tmp_path / "logs", conn=rconn, restart_base_s=1.0)
    supervisors.append(sup)
    spawned: dict[str, list[float]] = {}
    want = {"crash": 1, "echo": 1}
    wait_for(lambda: tick(sup, want, spawned) and len(spawned.get("crash", ())) >= 4,
             timeout_s=60, what="four spawns of the crashing queue")
    assert "crash" in sup.crashloop_queues()
    times = spawned["crash"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == sorted(gaps) and gaps[-1] > gaps[0] + 2.0, gaps  # 1 s, 2 s, 4 s of backoff
    for gap, delay in zip(gaps, (1.0, 2.0, 4.0), strict=True):
        assert gap >= delay
    # the healthy queue kept its one worker and serves jobs
    assert spawned["echo"] == spawned["echo"][:1]
    wait_for(lambda: rconn.hexists(keys.QUEUES, "echo"), 20, "echo worker published its queue")
    with Client(redis_server.url) as client:
        assert client.submit("echo", {"x": 1}).result(timeout_s=20) == {"x": 1}
    # the crash loop is visible in the host status, and not a hot loop
    sup.publish_host_status()
    status = host_statuses(rconn)[HOST]
    assert status["crashloops"]["crash"]["consecutive"] >= 3
    assert status["crashloops"]["crash"]["last_error"].startswith("exit 3 after")
    assert "echo" not in status["crashloops"]
    # the fourth crash waits 8 s: no spawn in the meantime
    wait_for(lambda: tick(sup, want, spawned) and sup.crashes["crash"].total == 4, 30, "4th crash")
    assert sup.crashes["crash"].delay_s == 8.0 and not sup.can_spawn("crash", time.monotonic())
    tick(sup, want, spawned)
    assert len(spawned["crash"]) == 4 and sup.count("crash") == 0


def test_host_status_without_cgroups(rconn: redis.Redis, redis_server: RedisServer) -> None:
    sup = Supervisor(make_settings(redis_server.url), None, conn=rconn)
    sup.reap()  # keeps house: publishes the status
    status = host_statuses(rconn)[HOST]
    assert status["cgroups"] == {"available": False, "reason": "disabled (scaler.use_cgroups)"}
    assert status["isolation"]["on"] is False
    assert status["scaler_pid"] == os.getpid() and status["workers"] == 0
    sup.withdraw_host_status()
    assert HOST not in host_statuses(rconn)


# ---------------------------------------------------------------- adoption, in process


def _entry(pid: int, host: str = HOST, queue: str = "echo") -> bytes:
    now_ms = int(time.time() * 1000)
    return codec.pack({"pid": pid, "host": host, "queue": queue, "device": "cpu",
                       "started_ms": now_ms, "beat_ms": now_ms, "state": "idle"})


def test_adopted_process_polls_through_proc() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ticks = start_ticks(proc.pid)
        assert ticks is not None
        assert AdoptedProcess(proc.pid, ticks + 1).poll() == UNKNOWN_RC  # a reused pid
        adopted = AdoptedProcess(proc.pid, ticks)
        assert adopted.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            adopted.wait(0.05)
        adopted.terminate()
        assert adopted.wait(10) == UNKNOWN_RC  # a zombie is gone, as far as we know
    finally:
        proc.kill()
        proc.wait(10)


def test_find_adoptable_skips_strangers_and_marks_the_dead() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)
    registry = {
        "me": codec.unpack(_entry(os.getpid())),  # alive, but pytest is not `python -m worker`
        "gone": codec.unpack(_entry(dead.pid)),
        "elsewhere": codec.unpack(_entry(dead.pid, host="another-host")),
    }
    found, stale = find_adoptable(registry, HOST, None, set())
    assert found == [] and stale == ["gone"]


def test_supervisor_adopts_a_running_worker_and_retires_it(
    redis_server: RedisServer, rconn: redis.Redis, workers: WorkerProcs
) -> None:
    settings = make_settings(redis_server.url, echo={"handler": "echo"})
    proc = workers.start(settings, "echo")
    wait_for(lambda: rconn.hexists(keys.WORKERS, proc.worker_id), what="worker registered")  # type: ignore[attr-defined]
    rconn.hset(keys.WORKERS, "echo.cpu.1.dead", _entry(2**22 + 7))  # no such pid
    sup = Supervisor(settings, None, conn=rconn)
    adopted = sup.adopt([CPU])
    assert [w.pid for w in adopted] == [proc.pid] and adopted[0].adopted
    assert not rconn.hexists(keys.WORKERS, "echo.cpu.1.dead")
    assert sup.count("echo") == 1 and sup.adopt() == []  # adopted once
    sup.retire(adopted[0].worker_id, drain_timeout_s=10)
    exited = wait_for(sup.reap, what="adopted worker exits")
    assert exited[0].crashed is False and exited[0].returncode == UNKNOWN_RC
    assert proc.wait(10) == 0  # it drained


# ---------------------------------------------------------------- adoption, real scaler


def _write_config(path: Path, url: str, stop_workers_on_exit: bool) -> Path:
    path.write_text(yaml.safe_dump({
        "redis": {"url": url},
        "state_dir": str(path.parent / "state"),
        "queues": {"echo": {"handler": "echo", "device": "cpu", "workers": 2, "min_workers": 2,
                            "max_workers": 2}},
        "worker": {"heartbeat_interval_s": 0.2, "drain_timeout_s": 10},
        "scaler": {"tick_s": 0.2, "autoscale": False, "stop_workers_on_exit": stop_workers_on_exit},
    }))
    return path


def _live_workers(conn: redis.Redis) -> dict[str, int]:
    out: dict[str, int] = {}
    for worker_id, entry in decode_registry(conn.hgetall(keys.WORKERS)).items():
        if entry["host"] == HOST and start_ticks(entry["pid"]) is not None:
            out[worker_id] = entry["pid"]
    return out


def _host_beats(conn: redis.Redis) -> int:
    status = host_statuses(conn).get(HOST)
    return int(status["beat_ms"]) if status else 0


def _newer_beat(conn: redis.Redis, than_ms: int) -> int:
    beat = _host_beats(conn)
    return beat if beat > than_ms else 0


def _gone(pid: int) -> bool:
    return start_ticks(pid) is None


class Scalers:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []
        self.worker_pids: set[int] = set()

    def start(self, config: Path) -> subprocess.Popen[bytes]:
        fleet = Path(sys.executable).parent / "fleet"
        with open(self.tmp_path / f"scaler-{len(self.procs)}.log", "ab") as out:
            proc = subprocess.Popen([str(fleet), "--config", str(config), "scaler"], stdout=out,
                                    stderr=subprocess.STDOUT, cwd=self.tmp_path, start_new_session=True)
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        root = cgroup2_root()
        for pid in self.worker_pids:  # only what the test failed to stop
            if start_ticks(pid) is None:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError, FileNotFoundError):
                leaf = leaf_of_pid(pid)
                os.killpg(pid, signal.SIGKILL)
                if root is not None and "/fleet.slice/" in leaf:
                    wait_for(functools.partial(_gone, pid), 5, "killed worker gone")
                    (root / leaf.lstrip("/")).rmdir()


@pytest.fixture
def scalers(tmp_path: Path) -> Iterator[Scalers]:
    made = Scalers(tmp_path)
    yield made
    made.cleanup()


def test_restarted_scaler_adopts_workers_then_stops_them(
    redis_server: RedisServer, rconn: redis.Redis, tmp_path: Path, scalers: Scalers
) -> None:
    config = _write_config(tmp_path / "fleet.yaml", redis_server.url, stop_workers_on_exit=False)
    first = scalers.start(config)
    pids: dict[str, int] = wait_for(lambda: (w := _live_workers(rconn)) and len(w) == 2 and w, 60,
                                    "two workers")
    scalers.worker_pids.update(pids.values())
    leaves = {pid: leaf_of_pid(pid) for pid in pids.values()}
    first.send_signal(signal.SIGKILL)
    first.wait(10)

    _write_config(config, redis_server.url, stop_workers_on_exit=True)
    second = scalers.start(config)
    wait_for(lambda: (host_statuses(rconn).get(HOST) or {}).get("adopted") == 2, 60, "adoption")
    beat = _host_beats(rconn)
    for _ in range(3):  # several ticks later: the same two workers, no duplicate
        beat = wait_for(functools.partial(_newer_beat, rconn, beat), 10, "a host beat")
    assert _live_workers(rconn) == pids
    with Client(redis_server.url) as client:
        assert client.submit("echo", "adopted").result(timeout_s=20) == "adopted"

    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0
    for pid in pids.values():
        wait_for(functools.partial(_gone, pid), 10, f"worker {pid} gone")
    root = cgroup2_root()
    for leaf in leaves.values():
        if root is not None and "/fleet.slice/" in leaf:
            assert not (root / leaf.lstrip("/")).exists()
    assert HOST not in host_statuses(rconn)


def test_managed_worker_keeps_popen_api(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(10)
    worker = ManagedWorker("w", "q", CPU, proc, None, 0.0)
    assert worker.pid == proc.pid and not worker.isolation.ok and not worker.adopted
