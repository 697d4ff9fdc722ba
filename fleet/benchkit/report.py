"""The report: every Fleet figure next to its ceiling, the ratio, and the issue's targets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TARGET_MAP_PER_S = 50_000
TARGET_MAP_OF_CEILING = 0.25
TARGET_SUBMIT_PER_S = 10_000
TARGET_P50_MS = 1.0
TARGET_P99_MS = 3.0
TARGET_EMBED_OF_DIRECT = 0.90
TARGET_IDLE_WORKER_MB = 80.0
TARGET_EMBED_OVER_MODEL_MB = 150.0


@dataclass(frozen=True)
class Row:
    figure: str
    value: float | None
    unit: str
    ceiling: float | None = None  # what the value is compared with, same unit
    target: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.ceiling:
            return None
        return self.value / self.ceiling


def rows(r: dict[str, Any]) -> list[Row]:
    return [*_ceiling_rows(r), *_noop_rows(r), *_latency_rows(r), *_embed_rows(r), *_memory_rows(r)]


def _ceiling_rows(r: dict[str, Any]) -> list[Row]:
    c = r["ceiling"]
    return [
        Row("ceiling: pipelined XADD", c["xadd_pipelined_per_s"], "entries/s"),
        Row("ceiling: XREADGROUP + XACK", c["xreadgroup_xack_per_s"], "entries/s"),
    ]


def _noop_rows(r: dict[str, Any]) -> list[Row]:
    n, xadd = r["noop"], r["ceiling"]["xadd_pipelined_per_s"]
    out = []
    for key, label in (("map_1_worker", "no-op map, 1 worker"), ("map_2_workers", "no-op map, 2 workers")):
        value = n[f"{key}_per_s"]
        met = value >= TARGET_MAP_PER_S and value / xadd >= TARGET_MAP_OF_CEILING
        out.append(Row(label, value, "jobs/s", xadd, ">= 50k/s and >= 25%", met))
    k = n["submitters"]
    for key, label in (
        ("submit_threads", f"submit per job, {k} threads"),
        ("submit_async", f"submit per job, {k} asyncio tasks"),
    ):
        value = n.get(f"{key}_per_s")
        out.append(
            Row(
                label,
                value,
                "jobs/s",
                xadd,
                ">= 10k/s",
                None if value is None else value >= TARGET_SUBMIT_PER_S,
            )
        )
    return out


def _latency_rows(r: dict[str, Any]) -> list[Row]:
    lat = r["latency"]
    rate = f"{lat['rate_per_s']:.0f}/s"
    return [
        Row(f"latency p50 at {rate}", lat["p50_ms"], "ms", None, "<= 1 ms", lat["p50_ms"] <= TARGET_P50_MS),
        Row(f"latency p99 at {rate}", lat["p99_ms"], "ms", None, "<= 3 ms", lat["p99_ms"] <= TARGET_P99_MS),
        Row(f"latency max at {rate}", lat["max_ms"], "ms"),
    ]


def _embed_rows(r: dict[str, Any]) -> list[Row]:
    e = r["embed"]
    fleet, direct = e["fleet_sentences_per_s"], e["direct_sentences_per_s"]
    return [
        Row(f"embed direct, batch {e['batch']}", direct, "sentences/s"),
        Row(
            "embed through the fleet, 1 worker",
            fleet,
            "sentences/s",
            direct,
            ">= 90% of direct",
            fleet >= TARGET_EMBED_OF_DIRECT * direct,
        ),
        Row("embed batch fill (mean batch / max_batch)", e["batch_fill"], "", None, "", None),
    ]


def _memory_rows(r: dict[str, Any]) -> list[Row]:
    m = r["memory"]
    allowed = m["model_footprint_mb"] + TARGET_EMBED_OVER_MODEL_MB
    return [
        Row(
            "idle no-op worker RSS",
            m["noop_worker_idle_rss_mb"],
            "MiB",
            None,
            "< 80 MB",
            m["noop_worker_idle_rss_mb"] < TARGET_IDLE_WORKER_MB,
        ),
        Row("model footprint (fresh process - bare)", m["model_footprint_mb"], "MiB"),
        Row("embed worker RSS right after the run", m.get("embed_worker_peak_rss_mb"), "MiB"),
        Row(
            "embed worker RSS, idle after the run",
            m["embed_worker_rss_mb"],
            "MiB",
            allowed,
            "<= model + 150 MB",
            m["embed_worker_rss_mb"] <= allowed,
        ),
    ]


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows that carry a target, for --json."""
    return [
        {"figure": row.figure, "value": row.value, "target": row.target, "met": row.met}
        for row in rows(r)
        if row.target
    ]


def table_rows(r: dict[str, Any]) -> list[list[str]]:
    return [
        [
            row.figure,
            _num(row.value),
            row.unit,
            _num(row.ceiling),
            "" if row.ratio is None else f"{row.ratio:.1%}",
            row.target,
            _verdict(row.met),
        ]
        for row in rows(r)
    ]


HEADERS = ("figure", "value", "unit", "vs ceiling", "ratio", "target", "met")


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def _verdict(met: bool | None) -> str:
    return "" if met is None else ("yes" if met else "NO")
