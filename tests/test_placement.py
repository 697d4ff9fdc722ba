"""Placement scenarios: tables of named cases over the pure placement function."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from scheduler.placement import DeviceLoad, Placement, PlacementNeed, place, spread

GiB = 2**30


def sim(n: int, workers: int = 0, util: float | None = 0.0, used_gib: float | None = 0,
        total_gib: float | None = 16) -> DeviceLoad:
    used = None if used_gib is None else int(used_gib * GiB)
    total = None if total_gib is None else int(total_gib * GiB)
    return DeviceLoad(f"sim-{n}", f"SIM-GPU-{n}", workers, util, used, total)


FOUR_IDLE = [sim(n) for n in range(4)]
NEED = PlacementNeed(model_memory_bytes=2 * GiB, max_workers_per_device=4,
                     util_watermark=0.9, mem_watermark=0.9)


@dataclass(frozen=True)
class PlaceCase:
    name: str
    devices: list[DeviceLoad]
    need: PlacementNeed
    want: Placement


PLACE_CASES = [
    PlaceCase("idle devices tie-break by id", FOUR_IDLE, NEED,
              Placement("sim-0", "sim-0: 0 workers, 100% mem free, 0% util")),
    PlaceCase("fewest workers wins over more free memory",
              [sim(0, workers=1, used_gib=0), sim(1, workers=0, used_gib=8)], NEED,
              Placement("sim-1", "sim-1: 0 workers, 50% mem free, 0% util")),
    PlaceCase("more free memory wins over lower utilisation",
              [sim(0, util=0.1, used_gib=6), sim(1, util=0.5, used_gib=2)], NEED,
              Placement("sim-1", "sim-1: 0 workers, 88% mem free, 50% util")),
    PlaceCase("lower utilisation breaks a memory tie",
              [sim(0, util=0.6), sim(1, util=0.2)], NEED,
              Placement("sim-1", "sim-1: 0 workers, 100% mem free, 20% util")),
    PlaceCase("device over memory watermark gets none",
              [sim(0, used_gib=15), sim(1, workers=2, used_gib=4)], NEED,
              Placement("sim-1", "sim-1: 2 workers, 75% mem free, 0% util")),
    PlaceCase("device over utilisation watermark gets none",
              [sim(0, util=0.95), sim(1, workers=1, util=0.3)], NEED,
              Placement("sim-1", "sim-1: 1 worker, 100% mem free, 30% util")),
    PlaceCase("model that does not fit is not placed",
              [sim(0, used_gib=13.5)], PlacementNeed(model_memory_bytes=4 * GiB),
              Placement(None, "no device: all without free memory for the model")),
    PlaceCase("all saturated at the worker limit",
              [sim(0, workers=4), sim(1, workers=4)], NEED,
              Placement(None, "no device: all at worker limit")),
    PlaceCase("all over memory watermark",
              [sim(0, used_gib=15), sim(1, used_gib=15.9)], NEED,
              Placement(None, "no device: all over memory watermark")),
    PlaceCase("mixed reasons are each named",
              [sim(0, workers=4), sim(1, util=0.99)], NEED,
              Placement(None, "no device: sim-0 at worker limit; "
                              "sim-1 over utilisation watermark")),
    PlaceCase("no devices at all", [], NEED, Placement(None, "no device: none discovered")),
    PlaceCase("unknown telemetry is placeable but ranks after known",
              [sim(0, util=None, used_gib=None, total_gib=None), sim(1, used_gib=1)], NEED,
              Placement("sim-1", "sim-1: 0 workers, 94% mem free, 0% util")),
    PlaceCase("only unknown telemetry still places",
              [sim(0, util=None, used_gib=None, total_gib=None)], NEED,
              Placement("sim-0", "sim-0: 0 workers")),
]


@pytest.mark.parametrize("case", PLACE_CASES, ids=[c.name for c in PLACE_CASES])
def test_place(case: PlaceCase) -> None:
    assert place(case.devices, case.need) == case.want


@dataclass(frozen=True)
class SpreadCase:
    name: str
    devices: list[DeviceLoad]
    need: PlacementNeed
    n: int
    want: list[str]


SPREAD_CASES = [
    SpreadCase("8 workers over 4 sim devices spread 2 each", FOUR_IDLE, NEED, 8,
               ["sim-0", "sim-1", "sim-2", "sim-3"] * 2),
    SpreadCase("device over its memory watermark gets none",
               [sim(0), sim(1, used_gib=15), sim(2)], NEED, 4,
               ["sim-0", "sim-2", "sim-0", "sim-2"]),
    SpreadCase("stops at the per-device worker limit",
               FOUR_IDLE[:2], PlacementNeed(max_workers_per_device=2), 6,
               ["sim-0", "sim-1", "sim-0", "sim-1"]),
    SpreadCase("placed models use up memory",
               [sim(0, total_gib=10)], PlacementNeed(model_memory_bytes=4 * GiB,
                                                     max_workers_per_device=8), 5,
               ["sim-0", "sim-0"]),
    SpreadCase("existing workers are counted",
               [sim(0, workers=2), sim(1)], NEED, 3, ["sim-1", "sim-1", "sim-0"]),
]


@pytest.mark.parametrize("case", SPREAD_CASES, ids=[c.name for c in SPREAD_CASES])
def test_spread(case: SpreadCase) -> None:
    assert spread(case.devices, case.need, case.n) == case.want


def test_stable_tie_break_ignores_input_order() -> None:
    assert place(list(reversed(FOUR_IDLE)), NEED).device_id == "sim-0"
    assert spread(list(reversed(FOUR_IDLE)), NEED, 4) == ["sim-0", "sim-1", "sim-2", "sim-3"]
