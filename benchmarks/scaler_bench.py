"""Scaler benchmark (not a test): how fast the scaler reacts, and what a tick costs.

    .venv/bin/python benchmarks/scaler_bench.py [--tick-s 0.2] [--ticks 300]

1. Reaction: a fleet at one idle `sleep` worker gets a burst; we time the burst to
   the scale-up decision (the supervisor's count rising) and to the first ack by a
   new worker (the first outcome whose worker is not the original one).
2. Cost: 8 queues with backlogs and 64 registered (fake) workers; a ScalerLoop with
   a no-op actuator runs `tick()` repeatedly; we count its round trips and time it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleet import codec, keys
from fleet.cli.up import running_fleet
from fleet.client import Client
from fleet.redis_server import RedisServer
from fleet.settings import FleetSettings, QueueSettings
from scaler.actuator import Applied
from scaler.daemon import ScalerLoop
from scheduler.devices import Device, Telemetry
from scheduler.supervisor import Supervisor


def settings_for(url: str, state_dir: Path, tick_s: float, queues: dict[str, QueueSettings]) -> FleetSettings:
    return FleetSettings(
        redis={"url": url},  # type: ignore[arg-type]
        queues=queues,
        worker={"heartbeat_interval_s": 0.2},  # type: ignore[arg-type]
        scaler={"tick_s": tick_s, "use_cgroups": False},  # type: ignore[arg-type]
        state_dir=state_dir,
    )


def sleep_queue() -> QueueSettings:
    return QueueSettings(
        handler="sleep",
        handler_options={"ms_per_batch": 20},
        max_batch=10,
        max_delay_ms=2,
        backlog_per_worker=50,
        stabilization_s=3,
        device="cpu",
        max_workers_per_device=8,
        min_workers=1,
        max_workers=4,
        block_ms=500,
        scale_up_cooldown_s=1,
    )


def _wait(pred, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        time.sleep(0.002)


def reaction(url: str, state_dir: Path, tick_s: float, jobs: int) -> dict[str, float]:
    settings = settings_for(url, state_dir, tick_s, {"q": sleep_queue()})
    with running_fleet(settings) as fleet, Client(url) as client:
        sup = fleet.supervisor
        _wait(lambda: sup.count("q") == 1 and fleet.loop.ticks > 3, 30)
        time.sleep(1.0)  # past the cooldown of the first (0 -> 1) scale-up
        (first,) = list(sup.workers)
        _wait(lambda: client.submit("q", 0).result(timeout_s=30) == 0, 30)  # the worker is ready
        t0 = time.monotonic()
        submitted = client.submit_many("q", list(range(jobs)))
        decided: list[float] = []
        watcher = threading.Thread(
            target=lambda: (_wait(lambda: sup.count("q") > 1, 30), decided.append(time.monotonic())),
            daemon=True,
        )
        watcher.start()
        first_new_ack = None
        for _, outcome in client.iter_outcomes("q", [j.id for j in submitted], 60):
            if first_new_ack is None and outcome.worker != first:
                first_new_ack = time.monotonic()
        drained = time.monotonic()
        watcher.join(30)
    return {
        "burst -> scale-up decision (s)": decided[0] - t0 if decided else float("nan"),
        "burst -> first ack by a new worker (s)": (first_new_ack or float("nan")) - t0,
        f"burst of {jobs} drained (s)": drained - t0,
    }


class NoopActuator:
    def apply(self, queue: str, decision: object, now_mono_s: float) -> Applied:
        return Applied()


def tick_cost(url: str, state_dir: Path, ticks: int) -> dict[str, float]:
    queues = {f"q{i}": sleep_queue() for i in range(8)}
    settings = settings_for(url, state_dir, 1.0, queues)
    device = Device("cpu", "cpu", 0, None, "CPU", 16 << 30, (0, 1))
    loop = ScalerLoop(
        settings,
        Supervisor(settings, None),
        {q: [device] for q in queues},
        telemetry=lambda d: Telemetry(0.5, 4 << 30, 16 << 30),
    )
    loop.actuator = NoopActuator()  # type: ignore[assignment]
    conn = loop.conn
    now_ms = int(time.time() * 1000)
    for i, q in enumerate(queues):
        conn.xgroup_create(keys.jobs(q), keys.GROUP, id="0", mkstream=True)
        for n in range(100 * (i + 1)):
            conn.xadd(keys.jobs(q), {"p": codec.pack(n)})
    for w in range(64):
        conn.hset(
            keys.WORKERS,
            f"q{w % 8}.cpu.{w}",
            codec.pack(
                {
                    "queue": f"q{w % 8}",
                    "device": "cpu",
                    "state": "busy" if w % 2 else "idle",
                    "host": "other",
                    "pid": w,
                    "started_ms": now_ms,
                    "beat_ms": now_ms,
                    "last_busy_ms": now_ms,
                    "load_s": 0.5,
                    "done": 0,
                    "failed": 0,
                }
            ),
        )
    loop.tick()  # loads the probe script
    reads0, writes0 = loop.reader.round_trips, loop.publisher.round_trips
    times = []
    began = time.perf_counter()
    for _ in range(ticks):
        started = time.perf_counter()
        loop.tick()
        times.append((time.perf_counter() - started) * 1000)
    elapsed_s = time.perf_counter() - began
    reads, writes = loop.reader.round_trips - reads0, loop.publisher.round_trips - writes0
    return {
        "tick, 8 queues / 64 workers: median (ms)": statistics.median(times),
        "tick, 8 queues / 64 workers: p95 (ms)": sorted(times)[int(0.95 * len(times))],
        "round trips per tick (read)": reads / ticks,
        "publish round trips per second (no change)": writes / elapsed_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tick-s", type=float, default=0.2)
    parser.add_argument("--ticks", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            results = reaction(server.url, Path(tmp) / "a", args.tick_s, args.jobs)
            server.stop()
            server = RedisServer(Path(tmp) / "redis2").start()
            results.update(tick_cost(server.url, Path(tmp) / "b", args.ticks))
        finally:
            server.stop()
    width = max(len(k) for k in results)
    print(f"scaler benchmark (tick_s {args.tick_s} for the reaction)")
    for name, value in results.items():
        print(f"  {name:<{width}}  {value:8.3f}")


if __name__ == "__main__":
    main()
