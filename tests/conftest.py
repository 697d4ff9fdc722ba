"""Fixtures: private redis-server processes on free ports (never 6379) and real
worker processes. Nothing here talks to a Redis the tests did not start."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from fleet.redis_server import RedisServer
from fleet.settings import FleetSettings, QueueSettings
from fleet.workerspec import WorkerSpec, new_worker_id
from scheduler.cgroups import SliceManager, cgroup2_root

ROOT = Path(__file__).resolve().parent.parent
STSB = ROOT.parent / "shared" / "data" / "stsb" / "stsb-en-dev.csv"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def rconn(redis_server: RedisServer) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_server.url)
    yield conn
    conn.close()


def make_settings(url: str, **queues: dict[str, Any]) -> FleetSettings:
    return FleetSettings(
        redis={"url": url},  # type: ignore[arg-type]
        queues={name: QueueSettings(**q) for name, q in queues.items()},
        worker={"heartbeat_interval_s": 0.2},  # type: ignore[arg-type]
    )


def wait_for(predicate: Callable[[], Any], timeout_s: float = 20.0, what: str = "condition") -> Any:
    """Poll with a deadline; the value of the predicate once truthy."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


class WorkerProcs:
    """Real `python -m worker` processes, stopped and reaped at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, settings: FleetSettings, queue: str, worker_id: str | None = None, output: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """`output`: a file that gets the worker's stdout and stderr (default: inherited)."""
        spec = WorkerSpec(settings, queue, "cpu", "cpu", (), worker_id or new_worker_id(queue, "cpu"))
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
        with open(output or os.devnull, "ab") as sink:
            out = sink if output is not None else None
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker"], stdin=subprocess.PIPE, stdout=out, stderr=out,
                env=env, start_new_session=True,
            )
        assert proc.stdin is not None
        proc.stdin.write(spec.to_json().encode())
        proc.stdin.close()
        proc.worker_id = spec.worker_id  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.fixture
def slice_manager() -> Iterator[SliceManager]:
    """A cgroup v2 slice of this test's own (unique name), removed afterwards; skips
    only where this host has no usable cgroup2 mount."""
    mgr = SliceManager(cgroup2_root(), base=f"fleet-test-{uuid.uuid4().hex[:12]}.slice")
    if not mgr.available:
        pytest.skip(f"cgroup v2 not usable on this host: {mgr.status}")
    try:
        yield mgr
    finally:
        mgr.remove_slice()
        assert mgr.slice_path is not None and not mgr.slice_path.exists()


@pytest.fixture
def workers() -> Iterator[WorkerProcs]:
    procs = WorkerProcs()
    yield procs
    procs.stop_all()
