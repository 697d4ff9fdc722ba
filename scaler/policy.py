"""The scaling decision: a pure function of a snapshot, the previous state and the policies.

    decide(snapshot, state, policies) -> Decision

No Redis, clock, process or randomness in here: time is `snapshot.now_s`, the
hysteresis is `PolicyState`, returned in the decision for the next call. Queues are
decided in name order and share the devices: workers planned for one queue use up
the headroom the next one sees. The stages live in `scaler.policy_stages`;
docs/scaling.md explains them and the reason codes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from scaler.model import (
    Decision,
    DeviceView,
    PolicyState,
    QueueDecision,
    QueuePolicy,
    QueueSnapshot,
    QueueState,
    Reason,
    Snapshot,
)
from scaler.policy_stages import (
    Bounds,
    Capacity,
    Window,
    backlog_need,
    choose_retirees,
    clamp,
    count_capacity,
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

DEFAULT_POLICY = QueuePolicy()


def decide(snapshot: Snapshot, state: PolicyState, policies: Mapping[str, QueuePolicy]) -> Decision:
    """Decide every queue of `snapshot`. A queue without a policy gets `QueuePolicy()`;
    the state of a queue no longer in the snapshot is dropped."""
    devices = snapshot.devices
    decisions: dict[str, QueueDecision] = {}
    states: dict[str, QueueState] = {}
    for name in sorted(snapshot.queues):
        decisions[name], states[name], devices = decide_queue(
            snapshot.queues[name],
            state.queues.get(name, QueueState()),
            policies.get(name, DEFAULT_POLICY),
            snapshot.now_s,
            devices,
        )
    return Decision(queues=decisions, new_state=PolicyState(queues=states))


@dataclass(frozen=True)
class _Inputs:
    """What the target stages read, measured once."""

    now_s: float
    capacity: Capacity
    need: int
    clamped: int
    up_reason: Reason
    bounds: Bounds
    pinned: int | None
    prev: QueueState
    policy: QueuePolicy

    @property
    def current(self) -> int:
        return self.capacity.current


@dataclass(frozen=True)
class _Plan:
    target: int
    reason: Reason
    window: Window = field(default_factory=Window)


def decide_queue(
    queue: QueueSnapshot,
    prev: QueueState,
    policy: QueuePolicy,
    now_s: float,
    devices: tuple[DeviceView, ...],
) -> tuple[QueueDecision, QueueState, tuple[DeviceView, ...]]:
    """Decide one queue; returns its decision, its next state and the devices with the
    workers it plans to add counted in."""
    capacity = count_capacity(queue.workers)
    learnt_rate = learn_worker_rate(prev.worker_rate_per_s, queue.completion_rate_per_s, queue.lag, capacity)
    inputs = _measure(queue, prev, policy, now_s, capacity, learnt_rate)
    plan, add_devices, devices = _fit_devices(_plan_target(inputs), capacity.current, policy, devices)
    scaled_up = plan.target > capacity.current
    decision = QueueDecision(
        current=capacity.current,
        desired=plan.target,
        raw_need=inputs.need,
        clamped=inputs.clamped,
        reason=plan.reason,
        retire=choose_retirees(queue.workers, capacity.current - plan.target),
        add=len(add_devices),
        add_devices=add_devices,
    )
    new_state = QueueState(
        last_scale_up_s=now_s if scaled_up else prev.last_scale_up_s,
        over_provisioned_since_s=plan.window.since_s,
        window_max_desired=plan.window.peak,
        last_desired=plan.target,
        last_reason=plan.reason,
        worker_rate_per_s=learnt_rate,
    )
    return decision, new_state, devices


def _measure(
    queue: QueueSnapshot,
    prev: QueueState,
    policy: QueuePolicy,
    now_s: float,
    capacity: Capacity,
    learnt_rate: float | None,
) -> _Inputs:
    """Stages 1-3 and 6: raw need from backlog, wait time and throughput; the bounds."""
    loading_after_scale_up = (
        prev.last_scale_up_s is not None and now_s - prev.last_scale_up_s < policy.load_time_s
    )
    holding_for_load = capacity.coming > 0 or loading_after_scale_up
    by_backlog = backlog_need(queue.lag, queue.pending, policy.backlog_per_worker)
    by_wait = wait_need(
        queue.oldest_wait_s,
        policy.max_wait_s,
        queue.lag,
        queue.completion_rate_per_s,
        capacity,
        holding_for_load,
    )
    rate = policy.worker_rate_per_s or learnt_rate
    by_throughput = throughput_need(queue.completion_rate_per_s, rate, capacity)
    need = max(by_backlog, by_wait, by_throughput)
    bounds = effective_bounds(policy, queue.override)
    pinned = queue.override.replicas
    return _Inputs(
        now_s=now_s,
        capacity=capacity,
        need=need,
        clamped=clamp(need, bounds) if pinned is None else max(0, pinned),
        up_reason=Reason.SCALE_UP_WAIT_TIME if by_wait > by_backlog else Reason.SCALE_UP_BACKLOG,
        bounds=bounds,
        pinned=pinned,
        prev=prev,
        policy=policy,
    )


def _plan_target(i: _Inputs) -> _Plan:
    """Stages 4-6 and 8: pinned count, tolerance band, scale up or stabilised scale down."""
    if i.pinned is not None:
        return _Plan(i.clamped, Reason.PINNED)
    if within_tolerance(i.clamped, i.current, i.policy.tolerance):
        return _Plan(i.current, _hold_reason(i))
    if i.clamped > i.current:
        return _plan_scale_up(i)
    return _plan_scale_down(i)


def _hold_reason(i: _Inputs) -> Reason:
    if i.need > i.bounds.hi and i.current >= i.bounds.hi:
        return Reason.AT_MAX
    if i.need < i.bounds.lo and i.current <= i.bounds.lo:
        return Reason.AT_MIN
    if i.capacity.coming > 0 and i.need > i.capacity.ready:
        return Reason.WAITING_FOR_LOAD
    return Reason.DESIRED_WITHIN_RANGE


def _plan_scale_up(i: _Inputs) -> _Plan:
    """Stage 5: cooldown and step limit; a count below min is raised to min at once."""
    floor = max(i.current, i.bounds.lo)
    if in_cooldown(i.prev.last_scale_up_s, i.now_s, i.policy.scale_up_cooldown_s):
        return _Plan(floor, Reason.AT_MIN if floor > i.current else Reason.COOLDOWN)
    limit = scale_up_limit(i.current, i.policy)
    if i.clamped > limit:
        return _Plan(max(floor, limit), Reason.SCALE_UP_LIMIT)
    if i.need != i.clamped:
        return _Plan(i.clamped, Reason.AT_MAX if i.need > i.clamped else Reason.AT_MIN)
    return _Plan(i.clamped, i.up_reason)


def _plan_scale_down(i: _Inputs) -> _Plan:
    """Stage 8: a count above max drops to max at once; otherwise scale down only after the
    stabilisation window, to the highest desired seen in it."""
    if i.current > i.bounds.hi:
        return _Plan(i.bounds.hi, Reason.AT_MAX)
    window = Window(i.prev.over_provisioned_since_s, i.prev.window_max_desired)
    target, window = stabilize_down(i.clamped, window, i.now_s, i.policy.stabilization_s)
    if target is None or target >= i.current:
        return _Plan(i.current, Reason.STABILIZING_DOWN, window)
    return _Plan(target, Reason.SCALE_TO_ZERO if target == 0 else Reason.SCALE_DOWN)


def _fit_devices(
    plan: _Plan, current: int, policy: QueuePolicy, devices: tuple[DeviceView, ...]
) -> tuple[_Plan, tuple[str, ...], tuple[DeviceView, ...]]:
    """Stage 7: place each worker to add; cap the target at what the devices can take."""
    wanted = plan.target - current
    if wanted <= 0:
        return plan, (), devices
    picks, devices = place_workers(devices, wanted, policy)
    if len(picks) < wanted:
        plan = replace(plan, target=current + len(picks), reason=Reason.DEVICES_SATURATED)
    return plan, picks, devices
