"""The scaling policy: each stage on a table of cases, then `decide` on named scenarios
driven tick by tick by a small simulator of a queue and its workers."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import cast

import pytest

from fleet.errors import ConfigError
from scaler.model import (
    DeviceView,
    PolicyState,
    QueueDecision,
    QueuePolicy,
    QueueSnapshot,
    QueueState,
    Reason,
    ScaleOverride,
    Snapshot,
    WorkerState,
    WorkerView,
)
from scaler.policy import decide
from scaler.policy_stages import (
    Bounds,
    Capacity,
    Window,
    backlog_need,
    choose_retirees,
    clamp,
    count_capacity,
    device_has_room,
    effective_bounds,
    in_cooldown,
    learn_worker_rate,
    place_workers,
    scale_up_limit,
    stabilize_down,
    throughput_need,
    wait_need,
    within_tolerance,
)

Q = "embed"
GIB = 1 << 30


def worker(
    wid: str,
    state: str = "idle",
    last_busy_s: float | None = None,
    started_s: float = 0.0,
    device_id: str = "gpu0",
) -> WorkerView:
    return WorkerView(wid, Q, device_id, cast(WorkerState, state), started_s, last_busy_s)


def workers(*states: str) -> tuple[WorkerView, ...]:
    return tuple(worker(f"w{i}", state) for i, state in enumerate(states))


# --- stage tables -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lag", "pending", "per_worker", "expected"),
    [
        (0, 0, 5000, 0),
        (1, 0, 5000, 1),
        (0, 1, 5000, 1),
        (5000, 0, 5000, 1),
        (5000, 1, 5000, 2),
        (12000, 3000, 5000, 3),
        (-3, 0, 5000, 0),
    ],
    ids=[
        "no work needs none",
        "one waiting job needs one worker",
        "one pending job needs one worker",
        "exactly one worker's backlog",
        "one job over needs a second",
        "lag and pending add up",
        "negative readings count as none",
    ],
)
def test_backlog_need(lag: int, pending: int, per_worker: int, expected: int) -> None:
    assert backlog_need(lag, pending, per_worker) == expected


@pytest.mark.parametrize(
    ("oldest_wait_s", "lag", "completion", "capacity", "holding", "expected"),
    [
        (None, 10, 1.0, Capacity(ready=2), False, 0),
        (30.0, 10, 1.0, Capacity(ready=2), False, 0),
        (31.0, 3, 1.0, Capacity(ready=2), False, 3),
        (45.0, 120, 1.0, Capacity(ready=2), False, 8),
        (90.0, 3, 0.0, Capacity(ready=2, busy=2), False, 6),
        (90.0, 1, 0.0, Capacity(ready=0), False, 1),
        (90.0, 120, 1.0, Capacity(ready=2, coming=1), True, 3),
    ],
    ids=[
        "nothing waiting",
        "at the limit is fine",
        "just over with a short backlog adds one",
        "enough to drain the backlog within max_wait_s",
        "nothing completing scales by how far over the wait is",
        "from zero asks for one",
        "while loading asks for no more than is coming",
    ],
)
def test_wait_need(
    oldest_wait_s: float | None,
    lag: int,
    completion: float,
    capacity: Capacity,
    holding: bool,
    expected: int,
) -> None:
    assert wait_need(oldest_wait_s, 30.0, lag, completion, capacity, holding) == expected


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ((), Capacity()),
        (("idle", "busy", "busy"), Capacity(ready=3, busy=2)),
        (("starting", "loading", "idle"), Capacity(ready=1, coming=2)),
        (("draining", "draining", "busy"), Capacity(ready=1, busy=1)),
    ],
    ids=["no workers", "ready ones", "loading ones are coming", "draining ones never count"],
)
def test_count_capacity(states: tuple[str, ...], expected: Capacity) -> None:
    assert count_capacity(workers(*states)) == expected


@pytest.mark.parametrize(
    ("previous", "rate", "lag", "capacity", "expected"),
    [
        (None, 300.0, 10, Capacity(ready=3, busy=3), 100.0),
        (50.0, 300.0, 0, Capacity(ready=3, busy=3), 50.0),
        (50.0, 300.0, 10, Capacity(ready=3, busy=2), 50.0),
        (None, 0.0, 10, Capacity(ready=3, busy=3), None),
    ],
    ids=[
        "saturated tick teaches the rate",
        "no lag is not saturation",
        "an idle worker is not saturation",
        "nothing completed teaches nothing",
    ],
)
def test_learn_worker_rate(
    previous: float | None, rate: float, lag: int, capacity: Capacity, expected: float | None
) -> None:
    assert learn_worker_rate(previous, rate, lag, capacity) == expected


@pytest.mark.parametrize(
    ("completion", "per_worker", "capacity", "expected"),
    [
        (250.0, 100.0, Capacity(ready=5), 3),
        (300.0, 100.0, Capacity(ready=5), 3),
        (900.0, 100.0, Capacity(ready=5), 5),
        (0.0, 100.0, Capacity(ready=5), 0),
        (250.0, None, Capacity(ready=5, busy=2), 2),
    ],
    ids=[
        "keeps what the completions need",
        "float noise does not round up",
        "never more than current",
        "nothing completing keeps nothing",
        "unknown rate keeps the busy ones",
    ],
)
def test_throughput_need(
    completion: float, per_worker: float | None, capacity: Capacity, expected: int
) -> None:
    assert throughput_need(completion, per_worker, capacity) == expected


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (ScaleOverride(), Bounds(1, 64)),
        (ScaleOverride(min=0), Bounds(0, 64)),
        (ScaleOverride(min=4, max=8), Bounds(4, 8)),
        (ScaleOverride(min=100), Bounds(100, 100)),
        (ScaleOverride(replicas=3), Bounds(1, 64)),
    ],
    ids=[
        "policy bounds",
        "override min replaces",
        "override min and max replace",
        "min over max wins",
        "pinned count leaves the bounds alone",
    ],
)
def test_effective_bounds(override: ScaleOverride, expected: Bounds) -> None:
    assert effective_bounds(QueuePolicy(), override) == expected


@pytest.mark.parametrize(
    ("need", "expected"), [(0, 1), (5, 5), (99, 64)], ids=["up to min", "inside", "down to max"]
)
def test_clamp(need: int, expected: int) -> None:
    assert clamp(need, Bounds(1, 64)) == expected


@pytest.mark.parametrize(
    ("target", "current", "expected"),
    [(0, 0, True), (1, 0, False), (11, 10, True), (9, 10, True), (12, 10, False), (1, 2, False)],
    ids=[
        "nothing and nothing",
        "one from zero is a change",
        "ten percent up is within",
        "ten percent down is within",
        "twenty percent is a change",
        "small counts always change",
    ],
)
def test_within_tolerance(target: int, current: int, expected: bool) -> None:
    assert within_tolerance(target, current, 0.1) is expected


@pytest.mark.parametrize(
    ("current", "expected"),
    [(0, 8), (1, 9), (8, 16), (20, 40)],
    ids=["from zero by step", "small by step", "step and factor agree", "large by factor"],
)
def test_scale_up_limit(current: int, expected: int) -> None:
    assert scale_up_limit(current, QueuePolicy()) == expected


@pytest.mark.parametrize(
    ("last_s", "now_s", "expected"),
    [(None, 100.0, False), (96.0, 100.0, True), (95.0, 100.0, False)],
    ids=["never scaled", "inside cooldown", "cooldown over"],
)
def test_in_cooldown(last_s: float | None, now_s: float, expected: bool) -> None:
    assert in_cooldown(last_s, now_s, 5.0) is expected


@pytest.mark.parametrize(
    ("desired", "window", "now_s", "expected"),
    [
        (2, Window(), 100.0, (None, Window(100.0, 2))),
        (2, Window(50.0, 7), 100.0, (None, Window(50.0, 7))),
        (2, Window(40.0, 7), 100.0, (7, Window())),
        (5, Window(40.0, 3), 100.0, (5, Window())),
        (0, Window(40.0, 0), 100.0, (0, Window())),
    ],
    ids=[
        "opens the window",
        "keeps the peak while open",
        "after the window scales to the peak",
        "the latest desired counts towards the peak",
        "idle all window long goes to zero",
    ],
)
def test_stabilize_down(
    desired: int, window: Window, now_s: float, expected: tuple[int | None, Window]
) -> None:
    assert stabilize_down(desired, window, now_s, 60.0) == expected


RETIRE_POOL = (
    worker("busy-old", "busy", last_busy_s=10.0),
    worker("idle-recent", "idle", last_busy_s=90.0),
    worker("idle-old", "idle", last_busy_s=20.0),
    worker("never", "idle", last_busy_s=None, started_s=5.0),
    worker("leaving", "draining", last_busy_s=1.0),
    worker("busy-new", "busy", last_busy_s=99.0),
)


@pytest.mark.parametrize(
    ("pool", "count", "expected"),
    [
        (RETIRE_POOL, 0, ()),
        (RETIRE_POOL, 1, ("never",)),
        (RETIRE_POOL, 3, ("never", "idle-old", "idle-recent")),
        (RETIRE_POOL, 4, ("never", "idle-old", "idle-recent", "busy-old")),
        (RETIRE_POOL, 9, ("never", "idle-old", "idle-recent", "busy-old", "busy-new")),
        (
            (worker("a", "loading", started_s=50.0), worker("b", "idle", None, started_s=10.0)),
            1,
            ("a",),
        ),
    ],
    ids=[
        "none to retire",
        "never-busy goes first",
        "idle ones by oldest last busy",
        "a busy one only after every idle one",
        "never a draining one",
        "youngest first among the never-busy",
    ],
)
def test_choose_retirees(pool: tuple[WorkerView, ...], count: int, expected: tuple[str, ...]) -> None:
    assert choose_retirees(pool, count) == expected


MODEL_POLICY = QueuePolicy(model_memory_bytes=20 * GIB, max_workers_per_device=4)


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        (DeviceView("d"), True),
        (DeviceView("d", utilization=0.95), False),
        (DeviceView("d", utilization=0.5, workers=4), False),
        (DeviceView("d", memory_used_bytes=40 * GIB, memory_total_bytes=80 * GIB), True),
        (DeviceView("d", memory_used_bytes=60 * GIB, memory_total_bytes=80 * GIB), False),
        (DeviceView("d", memory_used_bytes=75 * GIB, memory_total_bytes=80 * GIB), False),
    ],
    ids=[
        "unknown readings do not block",
        "over the utilisation watermark",
        "at the workers-per-device limit",
        "room for the model under the watermark",
        "the model would cross the memory watermark",
        "already over the memory watermark",
    ],
)
def test_device_has_room(device: DeviceView, expected: bool) -> None:
    assert device_has_room(device, MODEL_POLICY) is expected


def gpu(did: str, used_gib: int = 0, util: float = 0.1, workers: int = 0) -> DeviceView:
    return DeviceView(did, util, used_gib * GIB, 80 * GIB, workers)


@pytest.mark.parametrize(
    ("devices", "count", "expected"),
    [
        ((gpu("a", workers=1), gpu("b")), 1, ("b",)),
        ((gpu("a", used_gib=10), gpu("b")), 1, ("b",)),
        ((gpu("a", util=0.5), gpu("b", util=0.2)), 1, ("b",)),
        ((gpu("b"), gpu("a")), 1, ("a",)),
        ((gpu("a"), gpu("b")), 4, ("a", "b", "a", "b")),
        ((gpu("a"), gpu("b", util=0.99)), 5, ("a", "a", "a")),
        ((gpu("a", util=0.99),), 2, ()),
    ],
    ids=[
        "fewest workers first",
        "then most free memory",
        "then lowest utilisation",
        "then by id",
        "spreads as it places",
        "stops when memory runs out",
        "nothing on a saturated device",
    ],
)
def test_place_workers(devices: tuple[DeviceView, ...], count: int, expected: tuple[str, ...]) -> None:
    picks, after = place_workers(devices, count, MODEL_POLICY)
    assert picks == expected
    assert sum(d.workers for d in after) == sum(d.workers for d in devices) + len(expected)


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ConfigError, match="min_workers"):
        QueuePolicy(min_workers=5, max_workers=2)
    with pytest.raises(ConfigError, match="backlog_per_worker"):
        QueuePolicy(backlog_per_worker=0)


# --- the simulator ------------------------------------------------------------------------


@dataclass
class SimWorker:
    id: str
    device_id: str
    state: str
    started_s: float
    ready_at_s: float
    last_busy_s: float | None = None

    def view(self) -> WorkerView:
        return worker(self.id, self.state, self.last_busy_s, self.started_s, self.device_id)


@dataclass
class Sim:
    """One queue fed at `arrivals_per_s(now_s)` and served by workers of `service_per_s` jobs
    a second each. Every tick: snapshot → decide → apply (retire = drain, add = start
    loading) → advance the world by `tick_s`."""

    policy: QueuePolicy
    arrivals_per_s: Callable[[float], float]
    service_per_s: float = 100.0
    load_s: float = 0.0
    ready: int = 0
    devices: tuple[DeviceView, ...] = (DeviceView("gpu0"),)
    override: ScaleOverride = field(default_factory=ScaleOverride)
    tick_s: float = 1.0
    now_s: float = 0.0
    state: PolicyState = field(default_factory=PolicyState)
    workers: list[SimWorker] = field(default_factory=list)
    waiting: deque[list[float]] = field(default_factory=deque)  # [arrived_s, jobs]
    pending: float = 0.0
    completion_per_s: float = 0.0
    log: list[QueueDecision] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    _started: int = 0

    def __post_init__(self) -> None:
        for _ in range(self.ready):
            self.start(self.devices[0].id, ready_at_s=-1.0)
            self.workers[-1].state = "idle"

    def start(self, device_id: str, ready_at_s: float) -> None:
        self.workers.append(SimWorker(f"w{self._started:03}", device_id, "loading", self.now_s, ready_at_s))
        self._started += 1

    def snapshot(self) -> Snapshot:
        lag = sum(jobs for _, jobs in self.waiting)
        queue = QueueSnapshot(
            queue=Q,
            lag=math.ceil(lag - 1e-9),
            pending=math.ceil(self.pending - 1e-9),
            oldest_wait_s=self.now_s - self.waiting[0][0] if self.waiting else None,
            completion_rate_per_s=self.completion_per_s,
            workers=tuple(w.view() for w in self.workers),
            override=self.override,
        )
        return Snapshot(self.now_s, {Q: queue}, tuple(map(self.device_view, self.devices)))

    def device_view(self, device: DeviceView) -> DeviceView:
        on_it = sum(w.device_id == device.id for w in self.workers)
        used = device.memory_used_bytes
        if used is not None:
            used += on_it * self.policy.model_memory_bytes
        return replace(device, workers=device.workers + on_it, memory_used_bytes=used)

    def tick(self) -> QueueDecision:
        result = decide(self.snapshot(), self.state, {Q: self.policy})
        self.state, decision = result.new_state, result.queues[Q]
        for w in self.workers:
            if w.id in decision.retire:
                w.state = "draining"
        for device_id in decision.add_devices:
            self.start(device_id, ready_at_s=self.now_s + self.load_s)
        self.log.append(decision)
        self.times.append(self.now_s)
        self.advance()
        return decision

    def advance(self) -> None:
        self.workers = [w for w in self.workers if w.state != "draining"]
        for w in self.workers:
            if w.state == "loading" and w.ready_at_s <= self.now_s:
                w.state = "idle"
        arrived = self.arrivals_per_s(self.now_s) * self.tick_s
        if arrived > 0:
            self.waiting.append([self.now_s, arrived])
        ready = sorted(
            (w for w in self.workers if w.state in ("idle", "busy")),
            key=lambda w: (-math.inf if w.last_busy_s is None else w.last_busy_s, w.id),
        )
        served = self.serve(len(ready) * self.service_per_s * self.tick_s)
        busy = math.ceil(served / (self.service_per_s * self.tick_s) - 1e-9)
        for i, w in enumerate(ready):
            w.state = "busy" if i < busy else "idle"
            w.last_busy_s = self.now_s if i < busy else w.last_busy_s
        self.pending, self.completion_per_s = served, served / self.tick_s
        self.now_s += self.tick_s

    def serve(self, capacity: float) -> float:
        served = 0.0
        while self.waiting and capacity - served > 1e-9:
            take = min(self.waiting[0][1], capacity - served)
            self.waiting[0][1] -= take
            served += take
            if self.waiting[0][1] <= 1e-9:
                self.waiting.popleft()
        return served

    def run(self, ticks: int) -> list[int]:
        return [self.tick().desired for _ in range(ticks)]


def constant(rate: float) -> Callable[[float], float]:
    return lambda now_s: rate


def step_at(at_s: float, before: float, after: float) -> Callable[[float], float]:
    return lambda now_s: before if now_s < at_s else after


def changes(sim: Sim, ticks: int) -> list[tuple[float, int, int, str]]:
    """(now_s, current, desired, reason) of every tick that changes the count."""
    sim.run(ticks)
    return [
        (now_s, d.current, d.desired, str(d.reason))
        for now_s, d in zip(sim.times, sim.log, strict=True)
        if d.desired != d.current
    ]


def wobbling(mean: float, amplitude: float) -> Callable[[float], float]:
    return lambda now_s: mean + amplitude * math.sin(now_s / 7)


# --- scenarios ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sim", "warmup_ticks", "expected"),
    [
        (Sim(QueuePolicy(backlog_per_worker=100), constant(250), ready=3), 0, 3),
        (Sim(QueuePolicy(backlog_per_worker=100), constant(250), ready=1), 20, 3),
        (Sim(QueuePolicy(), wobbling(900, 100), ready=1, load_s=5), 100, 10),
    ],
    ids=[
        "steady load does not change the count over 100 ticks",
        "steady load reached from one worker then holds",
        "a load wobbling by ten percent holds once settled",
    ],
)
def test_steady_load_holds(sim: Sim, warmup_ticks: int, expected: int) -> None:
    sim.run(warmup_ticks)
    counts = sim.run(100)
    assert counts == [expected] * 100
    assert {d.current for d in sim.log[warmup_ticks:]} == {expected}
    assert {d.reason for d in sim.log[warmup_ticks + 1 :]} == {Reason.DESIRED_WITHIN_RANGE}


@pytest.mark.parametrize(
    ("max_workers", "expected"),
    [
        (16, [(6.0, 1, 9, "ScaleUpLimit"), (11.0, 9, 16, "AtMax")]),
        (
            64,
            [
                (6.0, 1, 9, "ScaleUpLimit"),
                (11.0, 9, 18, "ScaleUpLimit"),
                (16.0, 18, 36, "ScaleUpLimit"),
                (21.0, 36, 64, "AtMax"),
            ],
        ),
    ],
    ids=["a spike reaches max within a few ticks", "a spike doubles its way to 64"],
)
def test_spike_reaches_max(max_workers: int, expected: list[tuple[float, int, int, str]]) -> None:
    sim = Sim(QueuePolicy(max_workers=max_workers), step_at(5, 0, 100_000), ready=1, load_s=3)
    assert changes(sim, 40) == expected
    assert sim.log[-1].desired == max_workers
    assert sim.log[-1].reason == Reason.AT_MAX


@pytest.mark.parametrize(
    ("policy", "ready", "arrivals", "expected"),
    [
        (QueuePolicy(min_workers=2), 8, constant(0), [(60.0, 8, 2, "ScaleDown")]),
        (QueuePolicy(min_workers=0), 3, constant(0), [(60.0, 3, 0, "ScaleToZero")]),
        (QueuePolicy(stabilization_s=30), 4, constant(0), [(30.0, 4, 1, "ScaleDown")]),
        (
            QueuePolicy(backlog_per_worker=100),
            3,
            lambda now_s: 300 if 40 <= now_s < 45 else 0,
            [(106.0, 3, 1, "ScaleDown")],
        ),
    ],
    ids=[
        "idle returns to min only after the window",
        "idle with min zero scales to zero",
        "a shorter window scales down sooner",
        "load coming back restarts the window",
    ],
)
def test_idle_returns_to_min_after_window(
    policy: QueuePolicy,
    ready: int,
    arrivals: Callable[[float], float],
    expected: list[tuple[float, int, int, str]],
) -> None:
    sim = Sim(policy, arrivals, ready=ready)
    assert changes(sim, 150) == expected
    first_change = sim.times.index(expected[0][0])
    assert {str(d.reason) for d in sim.log[1:first_change]} <= {
        "StabilizingDown",
        "DesiredWithinRange",
    }


def test_average_dropping_right_after_scale_out_does_not_scale_down() -> None:
    burst = step_at(3, 20_000, 200)  # 60,000 jobs in three seconds, then 200 jobs/s
    sim = Sim(QueuePolicy(), burst, ready=1, load_s=2)
    assert changes(sim, 250) == [
        (1.0, 1, 4, "ScaleUpBacklog"),
        (6.0, 4, 12, "ScaleUpBacklog"),
        (127.0, 12, 9, "ScaleDown"),
        (188.0, 9, 2, "ScaleDown"),
    ]
    by_time = dict(zip(sim.times, sim.log, strict=True))
    # The backlog drains at t=67 (the need falls to 9, then 2) and the count holds a full
    # window, then drops to the highest need seen inside it, not to the latest.
    assert [by_time[t].raw_need for t in (66.0, 67.0, 68.0)] == [12, 9, 2]
    assert {by_time[t].desired for t in range(6, 127)} == {12}
    assert (by_time[127.0].raw_need, by_time[127.0].desired) == (2, 9)


def test_workers_still_loading_stop_further_scale_up() -> None:
    # One slow worker (2 s a job) against 2 jobs/s: the wait crosses max_wait_s, four more
    # start, and while they load for 20 s the growing wait adds nobody.
    sim = Sim(QueuePolicy(max_wait_s=10), constant(2), service_per_s=0.5, ready=1, load_s=20)
    sim.run(40)
    by_time = dict(zip(sim.times, sim.log, strict=True))
    assert (by_time[14.0].desired, by_time[14.0].add, by_time[14.0].reason) == (
        5,
        4,
        Reason.SCALE_UP_WAIT_TIME,
    )
    assert [by_time[float(t)].desired for t in range(15, 34)] == [5] * 19
    assert {by_time[float(t)].reason for t in range(15, 34)} == {Reason.WAITING_FOR_LOAD}
    assert all(by_time[float(t)].add == 0 for t in range(15, 34))


THREE_GPUS = (gpu("a"), gpu("b"), gpu("c", util=0.97))


@pytest.mark.parametrize(
    ("policy", "devices", "expected_per_device"),
    [
        (QueuePolicy(model_memory_bytes=20 * GIB), THREE_GPUS, {"a": 3, "b": 3}),
        (QueuePolicy(max_workers_per_device=2), THREE_GPUS, {"a": 2, "b": 2}),
        (
            QueuePolicy(max_workers_per_device=4),
            (gpu("a", workers=3), gpu("b", used_gib=75)),
            {"a": 1},
        ),
    ],
    ids=[
        "saturated devices cap the count by memory",
        "saturated devices cap the count by workers per device",
        "other queues' workers and memory count",
    ],
)
def test_saturated_devices_cap_the_count(
    policy: QueuePolicy, devices: tuple[DeviceView, ...], expected_per_device: dict[str, int]
) -> None:
    sim = Sim(policy, constant(100_000), devices=devices)
    counts = sim.run(30)
    cap = sum(expected_per_device.values())
    assert max(counts) == cap
    assert counts[-1] == cap
    assert sim.log[-1].reason == Reason.DEVICES_SATURATED
    placed = [w.device_id for w in sim.workers]
    assert {d: placed.count(d) for d in set(placed)} == expected_per_device


@pytest.mark.parametrize(
    ("arrivals", "ready", "replicas", "expected"),
    [
        (constant(100_000), 1, 5, [5] * 10),
        (constant(0), 8, 5, [5] * 10),
        (constant(1000), 3, 0, [0] * 10),
    ],
    ids=[
        "a pinned count overrides a spike",
        "a pinned count overrides idleness at once",
        "a pinned zero overrides work",
    ],
)
def test_pinned_count_overrides(
    arrivals: Callable[[float], float], ready: int, replicas: int, expected: list[int]
) -> None:
    sim = Sim(QueuePolicy(), arrivals, ready=ready, override=ScaleOverride(replicas=replicas))
    assert sim.run(10) == expected
    assert {d.reason for d in sim.log} == {Reason.PINNED}
    assert len(sim.log[0].retire) == max(0, ready - replicas)


def test_one_job_scales_up_from_zero() -> None:
    sim = Sim(QueuePolicy(min_workers=0), lambda now_s: 1 if now_s == 3 else 0)
    assert changes(sim, 6) == [(4.0, 0, 1, "ScaleUpBacklog")]
    assert sim.log[4].add_devices == ("gpu0",)
    assert sim.log[4].raw_need == 1


def test_wait_over_max_wait_scales_up_with_small_backlog_in_the_simulator() -> None:
    # Ten seconds a job, a job every five seconds: the backlog never passes a handful, but
    # the oldest job's wait crosses 30 s at t=61 and the lag (7 jobs at 0.1 jobs/s, 70 s to
    # drain) asks for three workers, which then keep up.
    sim = Sim(QueuePolicy(), constant(0.2), service_per_s=0.1, ready=1)
    assert changes(sim, 120) == [(61.0, 1, 3, "ScaleUpWaitTime")]
    assert max(d.raw_need for d in sim.log[:61]) == 1
    assert max(d.raw_need for d in sim.log[61:]) == 3


# --- decide on one snapshot ---------------------------------------------------------------

NOW_S = 1000.0
OPEN_WINDOW = QueueState(over_provisioned_since_s=NOW_S - 60, window_max_desired=2)


def decide_one(
    queue: QueueSnapshot,
    state: QueueState | None = None,
    policy: QueuePolicy | None = None,
    devices: tuple[DeviceView, ...] = (DeviceView("gpu0"),),
) -> tuple[QueueDecision, QueueState]:
    prev = PolicyState({} if state is None else {Q: state})
    result = decide(Snapshot(NOW_S, {Q: queue}, devices), prev, {Q: policy or QueuePolicy()})
    return result.queues[Q], result.new_state.queues[Q]


@pytest.mark.parametrize(
    ("pool", "expected"),
    [
        (
            (
                worker("busy-now", "busy", last_busy_s=999.0),
                worker("idle-old", "idle", last_busy_s=100.0),
                worker("idle-recent", "idle", last_busy_s=990.0),
                worker("never", "idle", last_busy_s=None),
            ),
            ("never", "idle-old"),
        ),
        (
            (
                worker("busy-long-ago", "busy", last_busy_s=1.0),
                worker("idle-recent", "idle", last_busy_s=998.0),
                worker("busy-now", "busy", last_busy_s=999.0),
            ),
            ("idle-recent",),
        ),
        (
            (
                worker("gone", "draining", last_busy_s=None),
                worker("idle-a", "idle", last_busy_s=500.0),
                worker("idle-b", "idle", last_busy_s=900.0),
                worker("idle-c", "idle", last_busy_s=700.0),
            ),
            ("idle-a",),
        ),
    ],
    ids=[
        "retire least recently busy first",
        "never a busy one when an idle one exists",
        "never a draining one",
    ],
)
def test_retire_least_recently_busy_first(pool: tuple[WorkerView, ...], expected: tuple[str, ...]) -> None:
    decision, state = decide_one(QueueSnapshot(Q, workers=pool), OPEN_WINDOW)
    assert decision.reason == Reason.SCALE_DOWN
    assert decision.desired == 2
    assert decision.retire == expected
    assert (state.over_provisioned_since_s, state.window_max_desired) == (None, None)


@pytest.mark.parametrize(
    ("queue", "expected"),
    [
        (
            QueueSnapshot(
                Q, lag=3, oldest_wait_s=90.0, completion_rate_per_s=0.05, workers=workers("busy", "busy")
            ),
            (4, 2, Reason.SCALE_UP_WAIT_TIME),
        ),
        (
            QueueSnapshot(Q, lag=1, oldest_wait_s=31.0, completion_rate_per_s=0.5, workers=workers("busy")),
            (2, 1, Reason.SCALE_UP_WAIT_TIME),
        ),
        (
            QueueSnapshot(
                Q, lag=3, oldest_wait_s=90.0, completion_rate_per_s=0.05, workers=workers("busy", "loading")
            ),
            (2, 0, Reason.WAITING_FOR_LOAD),
        ),
    ],
    ids=[
        "wait time over max_wait_s scales up with small backlog",
        "just over max_wait_s adds one",
        "a loading worker holds the wait-time scale-up",
    ],
)
def test_wait_time_over_max_wait_scales_up(queue: QueueSnapshot, expected: tuple[int, int, Reason]) -> None:
    decision, state = decide_one(queue)
    assert (decision.desired, decision.add, decision.reason) == expected
    assert state.last_scale_up_s == (NOW_S if decision.add else None)


@pytest.mark.parametrize(
    ("queue", "state", "policy", "expected"),
    [
        (QueueSnapshot(Q, lag=50_000, workers=workers("busy")), None, None, (1, 9, 8, Reason.SCALE_UP_LIMIT)),
        (
            QueueSnapshot(Q, lag=50_000, workers=workers("busy")),
            QueueState(last_scale_up_s=NOW_S - 1),
            None,
            (1, 1, 0, Reason.COOLDOWN),
        ),
        (
            QueueSnapshot(Q, lag=30_000, workers=workers("busy", "loading", "starting")),
            None,
            None,
            (3, 6, 3, Reason.SCALE_UP_BACKLOG),
        ),
        (
            QueueSnapshot(Q, lag=12_000, workers=workers("busy", "loading", "starting")),
            None,
            None,
            (3, 3, 0, Reason.WAITING_FOR_LOAD),
        ),
        (
            QueueSnapshot(Q, lag=10**7, workers=workers(*["busy"] * 4)),
            None,
            QueuePolicy(max_workers=4),
            (4, 4, 0, Reason.AT_MAX),
        ),
        (QueueSnapshot(Q, workers=workers("idle")), None, None, (1, 1, 0, Reason.AT_MIN)),
        (
            QueueSnapshot(Q, lag=1, workers=workers("idle", "busy", "draining")),
            None,
            None,
            (2, 2, 0, Reason.STABILIZING_DOWN),
        ),
        (
            QueueSnapshot(Q, workers=workers(*["idle"] * 6), override=ScaleOverride(max=2)),
            None,
            None,
            (6, 2, 0, Reason.AT_MAX),
        ),
        (QueueSnapshot(Q, workers=(), override=ScaleOverride(min=3)), None, None, (0, 3, 3, Reason.AT_MIN)),
        (
            QueueSnapshot(Q, lag=55_000, workers=workers(*["busy"] * 10)),
            None,
            None,
            (10, 10, 0, Reason.DESIRED_WITHIN_RANGE),
        ),
        (QueueSnapshot(Q, lag=50_000, workers=workers("busy")), None, None, (1, 9, 8, Reason.SCALE_UP_LIMIT)),
    ],
    ids=[
        "a big backlog is limited to a step",
        "a scale-up inside the cooldown waits",
        "need beyond what is loading adds the difference",
        "need covered by loading workers waits for them",
        "at max stays at max",
        "idle at min stays at min",
        "draining workers do not count and the window opens",
        "a count over an override max drops at once",
        "a count under an override min rises at once",
        "a need within ten percent changes nothing",
        "no previous state is a fresh start",
    ],
)
def test_decide_reasons(
    queue: QueueSnapshot,
    state: QueueState | None,
    policy: QueuePolicy | None,
    expected: tuple[int, int, int, Reason],
) -> None:
    decision, _ = decide_one(queue, state, policy)
    assert (decision.current, decision.desired, decision.add, decision.reason) == expected
    assert len(decision.add_devices) == decision.add
    assert len(decision.retire) == max(0, decision.current - decision.desired)


def test_state_is_returned_not_hidden() -> None:
    decision, state = decide_one(QueueSnapshot(Q, workers=workers("idle", "idle", "idle")))
    assert state == QueueState(
        last_scale_up_s=None,
        over_provisioned_since_s=NOW_S,
        window_max_desired=1,
        last_desired=3,
        last_reason="StabilizingDown",
        worker_rate_per_s=None,
    )
    saturated = QueueSnapshot(
        Q, lag=30_000, completion_rate_per_s=300.0, workers=workers("busy", "busy", "busy")
    )
    decision, state = decide_one(saturated, state)
    assert (decision.desired, decision.reason) == (6, Reason.SCALE_UP_BACKLOG)
    assert state.worker_rate_per_s == 100.0
    assert state.last_scale_up_s == NOW_S
    assert state.over_provisioned_since_s is None


def test_queues_share_the_devices_in_name_order() -> None:
    spike = QueueSnapshot("a", lag=100_000)
    snapshot = Snapshot(
        NOW_S,
        {"b": replace(spike, queue="b"), "a": spike, "c": QueueSnapshot("c")},
        (DeviceView("gpu0"), DeviceView("gpu1", workers=1)),
    )
    policies = {"a": QueuePolicy(max_workers_per_device=3), "b": QueuePolicy()}
    result = decide(snapshot, PolicyState({"gone": QueueState(last_desired=4)}), policies)
    a, b, c = (result.queues[name] for name in "abc")
    assert (a.add_devices, a.reason) == (
        ("gpu0", "gpu0", "gpu1", "gpu0", "gpu1"),
        Reason.DEVICES_SATURATED,
    )
    assert (b.add, b.reason) == (8, Reason.SCALE_UP_LIMIT)
    assert (c.desired, c.add, c.reason) == (1, 1, Reason.AT_MIN)
    assert set(result.new_state.queues) == {"a", "b", "c"}


def test_decide_is_pure() -> None:
    queue = QueueSnapshot(Q, lag=20_000, oldest_wait_s=40.0, workers=workers("busy", "idle"))
    snapshot = Snapshot(NOW_S, {Q: queue}, (DeviceView("gpu0"),))
    first = decide(snapshot, PolicyState(), {Q: QueuePolicy()})
    assert decide(snapshot, PolicyState(), {Q: QueuePolicy()}) == first
