"""Chaos: 5,000 jobs while a random worker is SIGKILLed every half second and the
scaler replaces it, with one SIGKILL and restart of redis-server (AOF always) in
the middle. Every job ends with exactly one right outcome; nothing is left
pending; only jobs whose worker died holding them ran twice."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
import redis

from fleet import keys
from fleet.cli.up import scaler_loop
from fleet.client import Client
from fleet.redis_server import RedisServer
from fleet.settings import FleetSettings

JOBS = 5000
pytestmark = pytest.mark.timeout(150)


def chaos_settings(url: str, trace: Path, state: Path) -> FleetSettings:
    return FleetSettings(
        redis={"url": url, "socket_timeout_s": 2, "connect_timeout_s": 1},  # type: ignore[arg-type]
        queues={"chaos": {  # type: ignore[dict-item]
            "handler": "sleep", "max_batch": 10, "max_delay_ms": 0, "workers": 2, "min_workers": 2,
            "device": "cpu", "visibility_timeout_ms": 1000, "max_deliveries": 20, "block_ms": 300,
            "handler_options": {"ms_per_batch": 25, "trace_dir": str(trace)},
        }},
        worker={"heartbeat_interval_s": 0.2},  # type: ignore[arg-type]
        scaler={"tick_s": 0.2, "autoscale": False, "use_cgroups": False},  # type: ignore[arg-type]
        state_dir=state,
    )


def executions(trace: Path) -> dict[int, list[int]]:
    """payload -> pids that ran it."""
    runs: dict[int, list[int]] = defaultdict(list)
    for log in trace.glob("*.log"):
        for line in log.read_text().splitlines():
            payload, pid = line.split()
            runs[int(payload)].append(int(pid))
    return runs


class Chaos(threading.Thread):
    """Every half second, SIGKILL one serving worker of the fleet (one that loaded its
    model: killing workers still starting would be a crash loop, which the supervisor
    rightly backs off from — tested in test_supervisor)."""

    def __init__(self, supervisor, period_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.supervisor, self.period_s = supervisor, period_s
        self.stop = threading.Event()
        self.killed: list[int] = []
        self.rng = random.Random(1234)

    def run(self) -> None:
        while not self.stop.wait(self.period_s):
            live = [w for w in list(self.supervisor.workers.values())
                    if w.retire_deadline_s is None and w.ready]
            if live:
                victim = self.rng.choice(live)
                try:
                    os.kill(victim.pid, signal.SIGKILL)
                    self.killed.append(victim.pid)
                except ProcessLookupError:
                    pass


def test_chaos_loses_nothing(tmp_path):
    trace = tmp_path / "trace"
    trace.mkdir()
    server = RedisServer(tmp_path / "redis", appendfsync="always").start()
    settings = chaos_settings(server.url, trace, tmp_path / "state")
    started = time.monotonic()
    try:
        with scaler_loop(settings) as fleet, Client(settings.redis) as client:
            loop = threading.Thread(target=fleet.loop.run, daemon=True)
            loop.start()
            ids = [job.id for job in client.submit_many("chaos", list(range(JOBS)))]
            chaos = Chaos(fleet.supervisor)
            chaos.start()
            outcomes = {}
            restarted_at = first_after = None
            for job_id, outcome in client.iter_outcomes("chaos", ids, timeout_s=120):
                outcomes[job_id] = outcome
                if restarted_at is not None and first_after is None:
                    first_after = time.monotonic() - restarted_at
                if restarted_at is None and len(outcomes) >= JOBS // 2:
                    server.kill()
                    server.start()
                    restarted_at = time.monotonic()
            recovered_s = time.monotonic() - restarted_at if restarted_at else None
            chaos.stop.set()
            chaos.join()
            fleet.loop.stop.set()
            loop.join()
        conn = redis.Redis.from_url(server.url)
        values = [outcomes[i].value for i in ids]
        assert values == list(range(JOBS))  # every job, the right value
        assert all(outcomes[i].status == "ok" for i in ids)
        assert conn.xpending(keys.jobs("chaos"), keys.GROUP)["pending"] == 0
        assert sum(1 for _ in conn.scan_iter(keys.result("chaos", "*"), count=1000)) == JOBS
        runs = executions(trace)
        assert set(runs) == set(range(JOBS))
        twice = {p: pids for p, pids in runs.items() if len(pids) > 1}
        killed = set(chaos.killed)
        # a job run n times: at least n - 1 of the runs were on workers killed while holding it
        bad = {p: pids for p, pids in twice.items() if len(set(pids) & killed) < len(pids) - 1}
        assert not bad, f"a live worker's job ran twice: {sorted(bad.items())[:10]}; killed {sorted(killed)}"
        assert len(chaos.killed) >= 10
        print(f"\nchaos: {JOBS} jobs, {len(chaos.killed)} workers SIGKILLed, 1 redis SIGKILL+restart, "
              f"lost 0, ran twice {len(twice)}, wall {time.monotonic() - started:.1f}s, "
              f"redis restart to next outcome {first_after:.2f}s, to done {recovered_s:.1f}s")
        conn.close()
    finally:
        server.stop()
