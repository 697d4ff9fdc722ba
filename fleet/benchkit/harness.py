"""One benchmark run: a private redis-server (AOF, appendfsync everysec, a temp
dir), a fleet spawned the way `fleet up` spawns it (fresh interpreters), and
the measurements in an order where each runs on an otherwise idle fleet."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from fleet import codec, keys
from fleet.benchkit import ceiling, embed, memory, noop
from fleet.client import Client
from fleet.connection import connect
from fleet.errors import FleetError
from fleet.redis_server import RedisServer
from fleet.settings import FleetSettings, QueueSettings
from fleet.stsb import default_path, read_pairs, sentences_of

NOOP1, NOOP2, EMBED = "noop1", "noop2", "embed"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Sizes:
    ceiling_entries: int = 100_000
    ceiling_pipeline: int = 1000
    noop_jobs: int = 100_000
    noop_max_batch: int = 1000
    submit_jobs: int = 20_000
    submitters: int = 16
    latency_rate_per_s: float = 200.0
    latency_duration_s: float = 10.0
    embed_sentences: int | None = None  # None: the whole STS-B dev split
    embed_batch: int = 32


FULL = Sizes()
QUICK = Sizes(
    ceiling_entries=20_000, noop_jobs=10_000, submit_jobs=2_000, latency_duration_s=2.0, embed_sentences=128
)


def bench_settings(url: str, state_dir: Path, sizes: Sizes, with_embed: bool = True) -> FleetSettings:
    noop = {"handler": "echo", "max_batch": sizes.noop_max_batch, "max_delay_ms": 0, "device": "cpu"}
    queues = {
        NOOP1: QueueSettings.model_validate({**noop, "workers": 1}),
        NOOP2: QueueSettings.model_validate({**noop, "workers": 2}),
    }
    if with_embed:
        queues[EMBED] = QueueSettings.model_validate(
            {"handler": "embed", "max_batch": sizes.embed_batch, "device": "cpu"}
        )
    return FleetSettings(
        redis={"url": url},  # type: ignore[arg-type]
        queues=queues,
        worker={"heartbeat_interval_s": 0.5},  # type: ignore[arg-type]
        scaler={"autoscale": False, "use_cgroups": False, "tick_s": 0.2},  # type: ignore[arg-type]
        state_dir=state_dir,
        log_level="WARNING",
    )


@contextmanager
def bench_fleet(sizes: Sizes, with_embed: bool = True) -> Iterator[FleetSettings]:
    """A private redis-server and every benchmark queue's workers, all ready."""
    from fleet.cli.up import running_fleet

    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        server = RedisServer(Path(tmp) / "redis", appendfsync="everysec").start()
        try:
            settings = bench_settings(server.url, Path(tmp) / "state", sizes, with_embed)
            with running_fleet(settings) as fleet:
                wait_ready(fleet.conn, {n: q.workers for n, q in settings.queues.items()}, 300)
                yield fleet.settings
        finally:
            server.stop()


def worker_pids(conn: redis.Redis) -> dict[str, list[int]]:
    """Queue -> PIDs of its workers that have loaded their handler."""
    pids: dict[str, list[int]] = {}
    raws: list[bytes] = conn.hvals(keys.WORKERS)  # type: ignore[assignment]
    for raw in raws:
        info = codec.unpack(raw)
        if isinstance(info, dict) and info.get("state") in ("idle", "busy"):
            pids.setdefault(str(info.get("queue")), []).append(int(info["pid"]))
    return pids


def wait_ready(conn: redis.Redis, expected: dict[str, int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = worker_pids(conn)
        if all(len(pids.get(q, [])) >= n for q, n in expected.items()):
            return
        time.sleep(0.1)
    raise FleetError(f"the benchmark's workers were not ready within {timeout_s:.0f}s")


def run(sizes: Sizes, on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every measurement, in one run; a JSON-ready dict. `on_step` hears progress."""
    step = on_step or (lambda message: None)
    report: dict[str, Any] = {"sizes": asdict(sizes), "load_avg_before": os.getloadavg()}
    sentences = _sentences(sizes)
    step("starting redis-server and workers")
    with bench_fleet(sizes) as settings:
        conn = connect(settings.redis)
        report["memory"] = {"noop_worker_idle_rss_mb": _rss_mb(worker_pids(conn)[NOOP1][0])}
        step("raw Redis ceiling")
        report["ceiling"] = _ceiling(conn, sizes)
        step("no-op jobs: map and concurrent submitters")
        report["noop"] = _noop(settings, conn, sizes)
        step(f"latency at {sizes.latency_rate_per_s:.0f} jobs/s")
        report["latency"] = _latency(settings, sizes)
        step(f"embedding {len(sentences)} sentences through the fleet and directly")
        report["embed"] = _embed(settings, conn, sentences, sizes)
        embed_pid = worker_pids(conn)[EMBED][0]
        report["memory"]["embed_worker_peak_rss_mb"] = _rss_mb(embed_pid)
        step("embed worker memory once its queue has run dry")
        idle_after_s = settings.queues[EMBED].block_ms / 1000 + 3.0
        report["memory"]["embed_worker_rss_mb"] = _settled_rss_mb(embed_pid, idle_after_s)
        conn.close()
    step("model footprint in a fresh interpreter")
    bare, loaded = memory.model_footprint_bytes()
    report["memory"].update(bare_interpreter_rss_mb=bare / MIB, model_footprint_mb=(loaded - bare) / MIB)
    report["load_avg_after"] = os.getloadavg()
    report["cpus"] = os.cpu_count()
    return report


def _sentences(sizes: Sizes) -> list[str]:
    sentences = sentences_of(read_pairs(default_path()))
    return sentences[: sizes.embed_sentences] if sizes.embed_sentences else sentences


def _settled_rss_mb(pid: int, window_s: float) -> float:
    """RSS once the worker has gone idle: after a window longer than one empty BLOCK
    read, its handler's idle hook has run."""
    time.sleep(window_s)
    return _rss_mb(pid)


def _rss_mb(pid: int) -> float:
    return memory.rss_bytes(pid) / MIB


def _ceiling(conn: redis.Redis, sizes: Sizes) -> dict[str, float]:
    xadd = ceiling.xadd_rate(conn, sizes.ceiling_entries, sizes.ceiling_pipeline)
    read = ceiling.xreadgroup_rate(conn, sizes.ceiling_pipeline)
    return {"xadd_pipelined_per_s": xadd.per_s, "xreadgroup_xack_per_s": read.per_s}


def _noop(settings: FleetSettings, conn: redis.Redis, sizes: Sizes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with Client(settings.redis) as client:
        client.map(NOOP1, list(range(1000)))  # warm the listener and queue info
        client.map(NOOP2, list(range(1000)))
        for name, queue in (("map_1_worker", NOOP1), ("map_2_workers", NOOP2)):
            acks = embed.xack_calls(conn)
            rate = noop.map_rate(client, queue, sizes.noop_jobs)
            out[f"{name}_per_s"] = rate.per_s
            out[f"{name}_mean_batch"] = rate.items / max(1, embed.xack_calls(conn) - acks)
        threaded = noop.threaded_submit_rate(client, NOOP2, sizes.submit_jobs, sizes.submitters)
        out["submit_threads_per_s"] = threaded.per_s
    out["submitters"] = sizes.submitters
    out["submit_async_per_s"] = (
        noop.async_submit_rate(settings.redis, NOOP2, sizes.submit_jobs, sizes.submitters).per_s
        if noop.aio_available()
        else None
    )
    return out


def _latency(settings: FleetSettings, sizes: Sizes) -> dict[str, Any]:
    with Client(settings.redis) as client:
        lat = noop.open_loop_latency(client, NOOP1, sizes.latency_rate_per_s, sizes.latency_duration_s)
    return {"rate_per_s": sizes.latency_rate_per_s, **asdict(lat)}


def _embed(settings: FleetSettings, conn: redis.Redis, sentences: list[str], sizes: Sizes) -> dict[str, Any]:
    with Client(settings.redis) as client:
        rates = embed.compare(client, conn, EMBED, sentences, sizes.embed_batch)
    return {
        "sentences": len(sentences),
        "batch": sizes.embed_batch,
        "fleet_sentences_per_s": rates.fleet.per_s,
        "direct_sentences_per_s": rates.direct.per_s,
        "mean_batch": rates.fill.mean_batch,
        "batch_fill": rates.fill.fill,
    }
