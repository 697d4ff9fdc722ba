"""Metrics: worker counters, the scaler's aggregation across worker churn, and the
exposition (series bounded by queues x devices, counters that never go backwards,
no gauges of gone workers, no metrics files)."""

from __future__ import annotations

import os
import random
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fleet import codec, telemetry
from fleet.client import Client
from fleet.redis_server import RedisServer
from fleet.settings import FleetSettings, QueueSettings
from scaler.daemon import ScalerLoop
from scaler.exposition import FleetCollector, MetricsServer
from scaler.metrics import (
    DeviceRow,
    Frame,
    QueueRow,
    ScalerMetrics,
    StatsAggregator,
    WorkerCounts,
    parse_counts,
    worker_gauges,
)
from scaler.model import DeviceView, QueueDecision, QueuePolicy, QueueSnapshot
from scheduler.devices import Device, discover
from scheduler.supervisor import Supervisor
from tests.conftest import wait_for
from worker.execute import Work
from worker.stats import WorkerStats, outcome_of

Sample = tuple[str, tuple[tuple[str, str], ...]]


def samples(text: str) -> dict[Sample, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(values: dict[Sample, float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in values.items() if n == name and want <= set(lab))


class _Metrics:  # what MetricsServer needs from ScalerMetrics
    def __init__(self, frame: Frame | None) -> None:
        self.frame = frame

    def latest(self) -> Frame | None:
        return self.frame


def render(frame: Frame) -> str:
    registry = CollectorRegistry()
    registry.register(FleetCollector(_Metrics(frame)))  # type: ignore[arg-type]
    return generate_latest(registry).decode()


# ----------------------------------------------------------------------------- worker side


def _work(status: str, retryable: bool = False, attempts: int = 1, enqueued_ms: int = 1000) -> Work:
    job = codec.Job(id="1-0", entry_id="1-0", payload=b"x", enqueued_ms=enqueued_ms)
    work = Work("1-0", "1-0", None, job, attempts, {})
    work.outcome = codec.Outcome(status, attempts=attempts)
    work.retryable = retryable
    return work


@pytest.mark.parametrize(
    ("scenario", "status", "retryable", "attempts", "want"),
    [
        ("a job that succeeded", codec.STATUS_OK, False, 1, telemetry.OK),
        ("a bad payload fails for good", codec.STATUS_FAILED, False, 1, telemetry.FAILED),
        ("a handler error with deliveries left retries", codec.STATUS_FAILED, True, 1, telemetry.RETRY),
        ("a handler error on the last delivery is dead", codec.STATUS_FAILED, True, 3, telemetry.DEAD),
    ],
)
def test_outcome_of_matches_the_disposition(scenario: str, status: str, retryable: bool, attempts: int,
                                            want: str) -> None:
    assert outcome_of(_work(status, retryable, attempts), max_deliveries=3) == want, scenario


def test_worker_stats_round_trip_through_the_wire_format() -> None:
    stats = WorkerStats()
    stats.begin_batch(3)
    assert stats.encode()["in_flight"] == 3
    batch = [_work(codec.STATUS_OK, enqueued_ms=1000), _work(codec.STATUS_OK, enqueued_ms=1500),
             _work(codec.STATUS_FAILED, retryable=True)]
    stats.record_batch(batch, max_batch=4, max_deliveries=3, read_ms=2000, done_ms=2100, inference_s=0.02)
    decoded = telemetry.decode(codec.unpack(codec.pack(stats.encode())))
    assert decoded is not None
    totals, in_flight = decoded
    assert in_flight == 0
    assert totals.jobs == {"ok": 2, "failed": 0, "retry": 1, "dead": 0}
    assert totals.count("batch_size") == 1 and totals.sums["batch_fill"] == pytest.approx(0.75)
    assert totals.count("queue_wait_s") == 3 and totals.sums["queue_wait_s"] == pytest.approx(1.0 + 0.5 + 1.0)
    assert totals.sums["latency_s"] == pytest.approx(1.1 + 0.6 + 1.1)


@pytest.mark.parametrize("garbage", [None, 7, {"v": 99}, {"v": 1, "jobs": {}, "h": {"batch_size": [1]}}])
def test_stats_of_another_version_or_garbage_are_ignored(garbage: object) -> None:
    assert telemetry.decode(garbage) is None


# ----------------------------------------------------------------------------- aggregation


def _counts(worker_id: str, queue: str, device: str, ok: int, beat_ms: int = 0, state: str = "idle",
            in_flight: int = 0) -> WorkerCounts:
    t = telemetry.Totals()
    t.jobs["ok"] = ok
    t.observe_many("queue_wait_s", [0.01] * ok)
    return WorkerCounts(worker_id, queue, device, state, beat_ms, t, in_flight)


def _churn(rng: random.Random, lifetimes: int) -> Iterator[tuple[dict[str, WorkerCounts], list[WorkerCounts],
                                                                 int]]:
    """Registry churn: workers come, do work, and leave cleanly (an exit record, sometimes
    racing their registry entry) or crash (vanish). Yields (registry, exits, jobs so far)."""
    keys = [(f"q{i}", f"sim-{j}") for i in range(4) for j in range(2)]
    live: dict[str, list] = {}
    born, done_total, exits_pending = 0, 0, []
    while born < lifetimes or live:
        while born < lifetimes and len(live) < 24:
            queue, device = rng.choice(keys)
            live[f"w{born}"] = [queue, device, 0]
            born += 1
        exits = exits_pending
        exits_pending = []
        for worker_id, w in list(live.items()):
            n = rng.randint(0, 5)
            w[2] += n
            done_total += n
            fate = rng.random()
            if fate < 0.1:  # clean exit: final counts in fleet:exits, entry gone
                exits.append(_counts(worker_id, w[0], w[1], w[2]))
                del live[worker_id]
            elif fate < 0.13:  # clean exit seen while the entry still lingers
                exits.append(_counts(worker_id, w[0], w[1], w[2]))
            elif fate < 0.16:  # crash: what it did since its last beat was never published
                done_total -= n  # (those jobs are reclaimed and counted by whoever redoes them)
                del live[worker_id]
        registry = {i: _counts(i, w[0], w[1], w[2], state=rng.choice(["idle", "busy"]), in_flight=1)
                    for i, w in live.items()}
        for e in exits:  # a lingering entry leaves on the next tick
            live.pop(e.id, None)
        yield registry, exits, done_total


def test_500_worker_lifetimes_keep_series_constant_and_counters_monotonic() -> None:
    agg = StatsAggregator()
    cumulative: list[int] = []
    every, last_ok, ticks, last_done = set(), -1.0, 0, 0
    for registry, exits, done in _churn(random.Random(7), 500):
        agg.observe(registry, exits)
        in_flight, workers = worker_gauges(agg.live(0, 1000), [])
        text = render(Frame(at_s=0.0, ticks=ticks, totals=agg.totals(), in_flight=in_flight, workers=workers))
        values = samples(text)
        ok = total(values, "fleet_jobs_total", outcome="ok")
        assert ok >= last_ok, "a counter went backwards"
        last_ok, last_done, ticks = ok, done, ticks + 1
        assert not any(v.startswith("w") for _, lab in values for _, v in lab), "a worker id became a label"
        gauges = ("fleet_jobs_in_flight", "fleet_workers")
        cumulative.append(sum(1 for name, _ in values if name.startswith(("fleet_job", "fleet_batch"))
                              and name not in gauges))
        every.add(len(values))
    assert ticks > 20
    per_key = 4 + sum(len(b) + 3 for b in telemetry.BUCKETS.values())  # outcomes + buckets, +Inf, sum, count
    full = cumulative.index(8 * per_key)  # every (queue, device) has had a worker by then ...
    assert full < 5 and set(cumulative[full:]) == {8 * per_key}, "... and the count never changes again"
    assert max(every) <= 8 * (per_key + 1 + 5) + 3  # + in-flight + 5 states per key + scaler series
    assert last_ok == last_done  # every job of every clean or crashed lifetime counted once
    assert agg.seen == {} and agg.finished == set()


def test_gauges_come_from_live_workers_only() -> None:
    agg = StatsAggregator()
    agg.observe({"a": _counts("a", "q", "cpu", 3, beat_ms=10_000, in_flight=4),
                 "b": _counts("b", "q", "cpu", 2, beat_ms=1_000, in_flight=9)})
    in_flight, workers = worker_gauges(agg.live(now_ms=10_500, stale_ms=5_000), [("q", "sim-0")])
    assert in_flight == {("q", "cpu"): 4}  # b's heartbeat is stale: no gauge from it
    assert workers[("q", "cpu", "idle")] == 1 and workers[("q", "sim-0", "starting")] == 1
    agg.observe({})
    assert worker_gauges(agg.live(10_500, 5_000), [])[0] == {}
    assert agg.totals()[("q", "cpu")].jobs["ok"] == 5  # but their counts stay


def test_registry_entries_of_other_hosts_are_not_ours() -> None:
    stats = telemetry.encode(telemetry.Totals())
    entry = codec.pack({"queue": "q", "device": "cpu", "state": "idle", "host": "h2", "beat_ms": 1,
                        "stats": stats})
    assert parse_counts("w", entry, host="h1") is None
    assert parse_counts("w", entry, host="h2") is not None
    assert parse_counts("w", b"\xc1garbage", host="h2") is None


def _frame_of(workers_by_key: dict[str, tuple[str, str]], queues: int, devices: int) -> Frame:
    agg = StatsAggregator()
    agg.observe({i: _counts(i, q, d, 100, beat_ms=1, state="busy") for i, (q, d) in workers_by_key.items()})
    in_flight, gauges = worker_gauges(agg.live(1, 1000), [])
    rows = {f"q{n}": QueueRow(QueueSnapshot(f"q{n}", length=10, lag=5), QueueDecision(8, 8, 8, 8, "Pinned"),
                              QueuePolicy()) for n in range(queues)}
    devs = tuple(DeviceRow(Device(f"sim-{n}", "sim", n, f"SIM-GPU-{n}", "sim", 1 << 30),
                           DeviceView(f"sim-{n}", 0.5, 1, 1 << 30)) for n in range(devices))
    return Frame(at_s=time.time(), ticks=1, queues=rows, totals=agg.totals(), in_flight=in_flight,
                 workers=gauges, devices=devs, decisions={(q, "Pinned"): 1 for q in rows})


def _timed_scrape(frame: Frame) -> tuple[int, float]:
    server = MetricsServer("127.0.0.1", 0, _Metrics(frame), 60.0).start()  # type: ignore[arg-type]
    try:
        started = time.perf_counter()
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
        elapsed_s = time.perf_counter() - started  # the GET alone, as Prometheus sees it
        return len(samples(body)), elapsed_s
    finally:
        server.stop()


PER_KEY = 4 + sum(len(b) + 3 for b in telemetry.BUCKETS.values()) + 1 + 5  # counters, histograms, gauges
PER_QUEUE = 16 + 1 + 1  # gauges, crashes, one decision reason


@pytest.mark.parametrize(("scenario", "spread"), [
    ("every queue on its own GPU", lambda i: (f"q{i % 8}", f"sim-{i % 8}")),
    ("every queue on every GPU (worst case)", lambda i: (f"q{i % 8}", f"sim-{i // 8}")),
])
def test_series_and_scrape_time_with_8_queues_and_64_workers(
    scenario: str, spread: object, capsys: pytest.CaptureFixture[str]
) -> None:
    """The numbers docs/observability.md quotes: 8 queues, 64 workers, 8 GPUs."""
    workers = {f"w{i}": spread(i) for i in range(64)}  # type: ignore[operator]
    keys = len(set(workers.values()))
    n, scrape_s = _timed_scrape(_frame_of(workers, queues=8, devices=8))
    with capsys.disabled():
        print(f"\n{scenario}: {n} series, scrape {scrape_s * 1000:.1f} ms")
    assert n == keys * PER_KEY + 8 * PER_QUEUE + 8 * 4 + 2
    assert scrape_s < 1.0


# ----------------------------------------------------------------------------- real churn

ROUNDS, PER_ROUND, JOBS_PER_WORKER = 20, 10, 3


@pytest.fixture
def churn_fleet(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[ScalerLoop, MetricsServer]]:
    settings = FleetSettings(
        redis={"url": redis_server.url},  # type: ignore[arg-type]
        queues={"echo": QueueSettings(handler="echo", workers=0, min_workers=0, device="cpu", max_batch=4,
                                      max_delay_ms=0, block_ms=200)},
        worker={"heartbeat_interval_s": 0.2, "drain_timeout_s": 20},  # type: ignore[arg-type]
        scaler={"autoscale": False, "use_cgroups": False},  # type: ignore[arg-type]
        state_dir=tmp_path / "state",
    )
    supervisor = Supervisor(settings, None)
    conn = redis.Redis.from_url(redis_server.url)
    loop = ScalerLoop(settings, supervisor, {"echo": discover("cpu")}, conn=conn)
    loop.metrics = ScalerMetrics(conn, loop.host, stale_s=5.0)
    server = MetricsServer("127.0.0.1", 0, loop.metrics, 60.0).start()
    yield loop, server
    server.stop()
    supervisor.stop_all(5.0)
    conn.close()


def _scrape(server: MetricsServer) -> dict[Sample, float]:
    url = f"http://127.0.0.1:{server.port}/metrics"
    return samples(urllib.request.urlopen(url, timeout=5).read().decode())


def _drained(conn: redis.Redis) -> bool:
    group = conn.xinfo_groups("fleet:{echo}:jobs")[0]
    return group["lag"] == 0 and group["pending"] == 0


@pytest.mark.timeout(300)
def test_200_real_workers_spawned_and_retired(
    churn_fleet: tuple[ScalerLoop, MetricsServer], redis_server: RedisServer, tmp_path: Path
) -> None:
    loop, server = churn_fleet
    client = Client(redis_server.url)
    device = loop.all_devices[0]
    files_before = sorted(p for p in tmp_path.rglob("*") if "redis" not in p.parts)
    submitted, last_ok, seen_ids = 0, 0.0, set()
    for _ in range(ROUNDS):
        spawned = [loop.supervisor.spawn("echo", device).worker_id for _ in range(PER_ROUND)]
        seen_ids.update(spawned)
        wait_for(lambda: len(loop.conn.hkeys("fleet:workers")) >= PER_ROUND, 60, "workers registered")
        client.submit_many("echo", [{"n": i} for i in range(PER_ROUND * JOBS_PER_WORKER)])
        submitted += PER_ROUND * JOBS_PER_WORKER
        wait_for(lambda: _drained(loop.conn), 30, "jobs done")
        loop.tick()  # autoscale off, workers 0: retires every one of them
        wait_for(lambda: (loop.tick(), not loop.supervisor.workers)[1], 60, "workers gone")
        values = _scrape(server)
        ok = total(values, "fleet_jobs_total", outcome="ok")
        assert last_ok <= ok == submitted, "counters equal the jobs done, and never go backwards"
        last_ok = ok
    client.close()
    values = _scrape(server)
    assert len(seen_ids) == ROUNDS * PER_ROUND
    assert total(values, "fleet_job_queue_wait_seconds_count") == submitted
    gauges = [k for k in values if k[0] in ("fleet_jobs_in_flight", "fleet_workers")]
    assert not gauges, "gauges of dead workers"
    assert not any(v in seen_ids for _, labels in values for _, v in labels), "a worker id became a label"
    assert len(values) < 300  # one (queue, device): bounded, whatever the churn
    files_after = sorted(p for p in tmp_path.rglob("*") if "redis" not in p.parts)
    assert files_after == files_before, "no metrics directory or files, by design"
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ and "prometheus_multiproc_dir" not in os.environ
