"""The host's one metrics endpoint, served by the scaler process: ``/metrics`` (Prometheus
text format) and ``/healthz``.

A scrape renders the latest `scaler.metrics.Frame` (built once per tick), so it
costs no Redis round trip and always shows one consistent tick. Every series is
labelled by queue, device, state, outcome or reason — never by worker ID — so the
series count depends on the configuration, not on how many workers came and went.
Device series carry DCGM exporter's own label names (``UUID``, ``gpu``) so a
panel can join ``DCGM_FI_DEV_GPU_UTIL`` on ``UUID``. Metric names and meanings:
docs/observability.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from fleet import telemetry
from fleet.settings import FleetSettings
from scaler.daemon import stale_after_s
from scaler.metrics import DeviceRow, Frame, QueueRow, ScalerMetrics

log = logging.getLogger("fleet.scaler")

_Q, _QD = ["queue"], ["queue", "device"]
_DEVICE_LABELS = ["device", "vendor", "UUID", "gpu"]

# name, help, value of a QueueRow (None: no sample)
QUEUE_GAUGES: tuple[tuple[str, str, Callable[[QueueRow], float | None]], ...] = (
    ("fleet_queue_length", "Entries in the job stream (XLEN).", lambda r: r.snapshot.length),
    ("fleet_queue_lag", "Jobs never delivered to a worker.", lambda r: r.snapshot.lag),
    ("fleet_queue_pending", "Jobs delivered and not yet acknowledged.", lambda r: r.snapshot.pending),
    ("fleet_queue_oldest_wait_seconds", "Age of the oldest undelivered job (0 when none waits).",
     lambda r: r.snapshot.oldest_wait_s or 0.0),
    ("fleet_queue_dead_letters", "Entries in the dead-letter stream.", lambda r: r.dead_letters),
    ("fleet_queue_completion_rate_per_second", "Acknowledgements per second, smoothed (policy input).",
     lambda r: r.snapshot.completion_rate_per_s),
    ("fleet_queue_target_wait_seconds", "The queue's max_wait_s: the wait the policy scales to stay under.",
     lambda r: r.policy.max_wait_s),
    ("fleet_queue_backlog_per_worker", "Backlog one worker is meant to carry (policy input).",
     lambda r: r.policy.backlog_per_worker),
    ("fleet_queue_min_workers", "Lower bound on workers (settings or `fleet scale`).", lambda r: r.bounds[0]),
    ("fleet_queue_max_workers", "Upper bound on workers (settings or `fleet scale`).", lambda r: r.bounds[1]),
    ("fleet_queue_workers_ready", "Workers idle or busy.", lambda r: r.ready),
    ("fleet_queue_workers_current", "Workers the policy counted (starting, loading, idle, busy).",
     lambda r: r.decision.current if r.decision else None),
    ("fleet_queue_workers_raw_need", "Workers backlog, wait time and throughput ask for, before limits.",
     lambda r: r.decision.raw_need if r.decision else None),
    ("fleet_queue_workers_clamped", "The raw need inside min/max (or the pinned count).",
     lambda r: r.decision.clamped if r.decision else None),
    ("fleet_queue_workers_desired", "Workers the scaler decided on (after steps, headroom, stabilisation).",
     lambda r: r.decision.desired if r.decision else None),
    ("fleet_queue_crashloop", "1 while the queue's workers keep crashing (spawns back off).",
     lambda r: float(r.crashloop)),
)

# fleet.telemetry histogram -> (metric name, help)
HISTOGRAMS = {
    "batch_size": ("fleet_batch_size", "Jobs per handler call."),
    "batch_fill": ("fleet_batch_fill_ratio", "Batch size / max_batch."),
    "queue_wait_s": ("fleet_job_queue_wait_seconds", "From enqueue to a worker reading the job."),
    "inference_s": ("fleet_batch_inference_seconds", "Handler time per batch."),
    "latency_s": ("fleet_job_latency_seconds", "From enqueue to the outcome written (end to end)."),
}


def scaler_families(frame: Frame) -> Iterator[Metric]:
    ticks = CounterMetricFamily("fleet_scaler_ticks", "Scaler ticks that completed.")
    ticks.add_metric([], frame.ticks)
    yield ticks
    yield GaugeMetricFamily("fleet_scaler_last_tick_timestamp_seconds", "When the shown tick ran.",
                            value=frame.at_s)
    decisions = CounterMetricFamily("fleet_scaler_decisions", "Decisions per queue by reason (one a tick).",
                                    labels=["queue", "reason"])
    for (queue, reason), n in sorted(frame.decisions.items()):
        decisions.add_metric([queue, reason], n)
    yield decisions


def queue_families(frame: Frame) -> Iterator[Metric]:
    for name, doc, value in QUEUE_GAUGES:
        family = GaugeMetricFamily(name, doc, labels=_Q)
        for queue, row in sorted(frame.queues.items()):
            v = value(row)
            if v is not None:
                family.add_metric([queue], float(v))
        yield family
    crashes = CounterMetricFamily("fleet_worker_crashes", "Workers of the queue that exited unasked.",
                                  labels=_Q)
    for queue, row in sorted(frame.queues.items()):
        crashes.add_metric([queue], row.crashes_total)
    yield crashes


def _cumulative(name: str, counts: list[float]) -> list[tuple[str, float]]:
    out, running = [], 0.0
    for bound, n in zip((*telemetry.BUCKETS[name], float("inf")), counts, strict=True):
        running += n
        out.append((floatToGoString(bound), running))
    return out


def worker_families(frame: Frame) -> Iterator[Metric]:
    jobs = CounterMetricFamily("fleet_jobs", "Deliveries finished by outcome (ok, failed, retry, dead).",
                               labels=[*_QD, "outcome"])
    for (queue, device), t in sorted(frame.totals.items()):
        for outcome in telemetry.OUTCOMES:
            jobs.add_metric([queue, device, outcome], t.jobs.get(outcome, 0))
    yield jobs
    for key, (name, doc) in HISTOGRAMS.items():
        family = HistogramMetricFamily(name, doc, labels=_QD)
        for (queue, device), t in sorted(frame.totals.items()):
            family.add_metric([queue, device], _cumulative(key, t.buckets[key]), t.sums[key])
        yield family
    in_flight = GaugeMetricFamily("fleet_jobs_in_flight", "Jobs in the batches live workers run now.",
                                  labels=_QD)
    for (queue, device), n in sorted(frame.in_flight.items()):
        in_flight.add_metric([queue, device], n)
    yield in_flight
    workers = GaugeMetricFamily("fleet_workers", "Live workers of this host by state.",
                                labels=[*_QD, "state"])
    for (queue, device, state), n in sorted(frame.workers.items()):
        workers.add_metric([queue, device, state], n)
    yield workers


def _device_labels(row: DeviceRow) -> list[str]:
    d = row.device
    return [d.id, d.vendor, d.uuid or "", "" if d.vendor == "cpu" else str(d.index)]


def device_families(frame: Frame) -> Iterator[Metric]:
    util = GaugeMetricFamily("fleet_device_utilization_ratio", "Device utilisation, 0..1 (CPU: load).",
                             labels=_DEVICE_LABELS)
    used = GaugeMetricFamily("fleet_device_memory_used_bytes", "Device memory in use.", labels=_DEVICE_LABELS)
    total = GaugeMetricFamily("fleet_device_memory_total_bytes", "Device memory.", labels=_DEVICE_LABELS)
    up = GaugeMetricFamily("fleet_device_telemetry_up", "1 when the device probe gave a reading.",
                           labels=_DEVICE_LABELS)
    for row in frame.devices:
        labels, r = _device_labels(row), row.reading
        seen = r is not None and (r.utilization is not None or r.memory_used_bytes is not None)
        up.add_metric(labels, float(seen))
        if r is None:
            continue
        for family, value in ((util, r.utilization), (used, r.memory_used_bytes),
                              (total, r.memory_total_bytes)):
            if value is not None:
                family.add_metric(labels, float(value))
    yield from (util, used, total, up)


class FleetCollector(Collector):
    def __init__(self, metrics: ScalerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        frame = self.metrics.latest()
        if frame is None:
            return
        for part in (scaler_families, queue_families, worker_families, device_families):
            yield from part(frame)


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, generate_latest(self.server.registry))
        elif path == "/healthz":
            ok, why = self.server.health()
            self._send(200 if ok else 503, "text/plain; charset=utf-8", f"{why}\n".encode())
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None  # a scrape a second is not news


class MetricsServer(ThreadingHTTPServer):
    """/metrics and /healthz in a daemon thread; `port` is the bound port (0 picks one)."""

    daemon_threads = True

    def __init__(self, host: str, port: int, metrics: ScalerMetrics, max_tick_age_s: float) -> None:
        super().__init__((host, port), _Handler)
        self.metrics = metrics
        self.max_tick_age_s = max_tick_age_s
        self.registry = CollectorRegistry()
        self.registry.register(FleetCollector(metrics))
        self.thread = threading.Thread(target=self.serve_forever, name="fleet-metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def health(self) -> tuple[bool, str]:
        frame = self.metrics.latest()
        if frame is None:
            return False, "no scaler tick yet"
        age = time.time() - frame.at_s
        if age > self.max_tick_age_s:
            return False, f"last scaler tick {age:.1f}s ago"
        return True, f"ok: tick {frame.ticks}, {age:.1f}s ago"

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(5)


def serve_metrics(settings: FleetSettings, loop: Any, port: int | None = None) -> MetricsServer | None:
    """Attach a `ScalerMetrics` to the loop and serve it; None when ``scaler.metrics_port`` is 0."""
    port = settings.scaler.metrics_port if port is None else port
    if port == 0:
        return None
    loop.metrics = ScalerMetrics(loop.conn, loop.host, stale_after_s(settings))
    server = MetricsServer(settings.scaler.metrics_host, port, loop.metrics,
                           max(5.0, 5 * settings.scaler.tick_s)).start()
    log.info("metrics on http://%s:%d/metrics (and /healthz)", settings.scaler.metrics_host, server.port)
    return server
