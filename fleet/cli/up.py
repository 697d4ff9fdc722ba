"""`fleet up` and `fleet scaler`: one loop; `up` also brings its own Redis."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

import redis

from fleet import codec, keys
from fleet.connection import connect, redact_url
from fleet.redis_server import RedisServer, new_password
from fleet.runtime import (
    StateDirLock,
    forget_private_redis,
    record_private_redis,
    surviving_private_redis,
)
from fleet.settings import FleetSettings, RedisSettings
from scaler.daemon import ScalerLoop
from scaler.exposition import serve_metrics
from scheduler.devices import discover
from scheduler.spawn import open_slice_manager
from scheduler.supervisor import Supervisor

log = logging.getLogger("fleet.up")


@dataclass
class RunningFleet:
    settings: FleetSettings
    conn: redis.Redis
    supervisor: Supervisor
    loop: ScalerLoop


def publish_queues(conn: redis.Redis, settings: FleetSettings) -> None:
    for name, q in settings.queues.items():
        info = codec.QueueInfo(name, q.handler, q.max_payload_bytes, q.max_backlog, q.result_ttl_s)
        conn.hset(keys.QUEUES, name, info.encode())


@contextmanager
def private_redis(settings: FleetSettings) -> Iterator[FleetSettings]:
    """Start a private redis-server when no URL is configured; stop it after."""
    if settings.redis.url is not None:
        yield settings
        return
    with StateDirLock(settings):
        survivor = surviving_private_redis(settings)
        if survivor is not None:  # a killed `fleet up` left it (and maybe its workers) running
            with _reused(settings, survivor) as live:
                yield live
            return
        with _started(settings) as live:
            yield live


@contextmanager
def _reused(settings: FleetSettings, survivor: RedisSettings) -> Iterator[FleetSettings]:
    log.warning("reusing the private redis-server a previous `fleet up` left running at %s; "
                "its workers are adopted", redact_url(survivor.url))
    try:
        yield settings.model_copy(update={"redis": survivor})
    finally:
        with contextlib.suppress(redis.RedisError), connect(survivor) as conn:
            conn.shutdown()  # AOF is fsynced on a clean shutdown
        forget_private_redis(settings)


@contextmanager
def _started(settings: FleetSettings) -> Iterator[FleetSettings]:
    server = RedisServer(settings.state_dir / "redis", password=new_password()).start()
    assert server.password is not None
    try:
        redis_settings = record_private_redis(settings, server.url, server.password)
        log.info("started a private redis-server at %s (AOF on, data in %s)",
                 server.url, server.data_dir)
        yield settings.model_copy(update={"redis": redis_settings})
    finally:
        server.stop()
        forget_private_redis(settings)


@contextmanager
def scaler_loop(settings: FleetSettings) -> Iterator[RunningFleet]:
    """The scaler and its supervisor; every worker is stopped on the way out."""
    conn = connect(settings.redis)
    publish_queues(conn, settings)
    slices = open_slice_manager(settings.scaler.cgroup_root) if settings.scaler.use_cgroups else None
    supervisor = Supervisor(settings, slices, log_dir=settings.state_dir / "logs", conn=conn)
    devices = {name: discover(q.device) for name, q in settings.queues.items()}
    supervisor.adopt(d for found in devices.values() for d in found)  # before the first tick
    supervisor.publish_host_status()
    loop = ScalerLoop(settings, supervisor, devices)
    log.info("fleet on %s: %s", redact_url(settings.redis.url),
             ", ".join(f"{n} ({q.handler}, {q.workers} on {q.device})" for n, q in settings.queues.items()))
    metrics = serve_metrics(settings, loop)  # /metrics and /healthz; None when metrics_port is 0
    try:
        yield RunningFleet(settings, conn, supervisor, loop)
    finally:
        loop.stop.set()
        if metrics is not None:
            metrics.stop()
        _leave(settings, supervisor)
        conn.close()


def _leave(settings: FleetSettings, supervisor: Supervisor) -> None:
    """Stop every worker, or leave them serving for the next scaler to adopt."""
    if settings.scaler.stop_workers_on_exit:
        supervisor.stop_all()
    elif supervisor.workers:
        log.info("leaving %d workers running (scaler.stop_workers_on_exit is false); "
                 "the next scaler on this host adopts them", len(supervisor.workers))
    try:
        supervisor.withdraw_host_status()
    except redis.RedisError as exc:
        log.warning("could not withdraw this host's status: %s", type(exc).__name__)


@contextmanager
def running_fleet(settings: FleetSettings) -> Iterator[RunningFleet]:
    """A whole fleet in the background (the demo and benchmarks use this)."""
    with private_redis(settings) as live, scaler_loop(live) as fleet:
        thread = threading.Thread(target=fleet.loop.run, name="fleet-scaler", daemon=True)
        thread.start()
        try:
            yield fleet
        finally:
            fleet.loop.stop.set()
            thread.join()


def run_foreground(settings: FleetSettings, own_redis: bool) -> None:
    """Run until SIGINT/SIGTERM, then drain every worker and stop."""
    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    stop = threading.Event()
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    redis_ctx = private_redis(settings) if own_redis else _as_is(settings)
    with redis_ctx as live, scaler_loop(live) as fleet:
        fleet.loop.stop = stop
        fleet.loop.run()
        log.info("stopping: draining %d workers", len(fleet.supervisor.workers))
    log.info("fleet stopped: every worker drained and the scaler is down")


@contextmanager
def _as_is(settings: FleetSettings) -> Iterator[FleetSettings]:
    yield settings
