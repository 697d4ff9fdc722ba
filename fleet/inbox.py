"""Where a client's replies land: outcomes matched to the callers waiting on them.

Pure bookkeeping, no I/O: the reply listener calls `deliver`, callers `register`
a waiter for the job IDs they wait on. An outcome that arrives before anyone
waits is kept (bounded; an evicted one is still readable from its result key).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Protocol

from fleet.codec import Outcome


class Waiter(Protocol):
    def put(self, job_id: str, outcome: Outcome) -> None: ...


class Inbox:
    def __init__(self, max_unclaimed: int = 1_000_000) -> None:
        self._lock = threading.Lock()
        self._arrived: OrderedDict[str, Outcome] = OrderedDict()
        self._waiting: dict[str, Waiter] = {}
        self._max_unclaimed = max_unclaimed
        self.evicted = 0

    def deliver(self, items: Iterable[tuple[str, Outcome]]) -> None:
        ready: list[tuple[Waiter, str, Outcome]] = []
        with self._lock:
            for job_id, outcome in items:
                waiter = self._waiting.pop(job_id, None)
                if waiter is not None:
                    ready.append((waiter, job_id, outcome))
                elif job_id not in self._arrived:  # first outcome wins
                    self._arrived[job_id] = outcome
                    if len(self._arrived) > self._max_unclaimed:
                        self._arrived.popitem(last=False)
                        self.evicted += 1
        _hand_over(ready)

    def register(self, job_ids: Iterable[str], waiter: Waiter) -> None:
        ready: list[tuple[str, Outcome]] = []
        with self._lock:
            for job_id in job_ids:
                outcome = self._arrived.pop(job_id, None)
                if outcome is not None:
                    ready.append((job_id, outcome))
                else:
                    self._waiting[job_id] = waiter
        for job_id, outcome in ready:
            waiter.put(job_id, outcome)

    def unregister(self, job_ids: Iterable[str]) -> None:
        with self._lock:
            for job_id in job_ids:
                self._waiting.pop(job_id, None)

    def waiting_count(self) -> int:
        with self._lock:
            return len(self._waiting)


def _hand_over(ready: list[tuple[Waiter, str, Outcome]]) -> None:
    """Give each waiter its outcomes: all at once where it takes a batch (`put_many`)."""
    if not ready:
        return
    by_waiter: dict[int, tuple[Waiter, list[tuple[str, Outcome]]]] = {}
    for waiter, job_id, outcome in ready:
        by_waiter.setdefault(id(waiter), (waiter, []))[1].append((job_id, outcome))
    for waiter, items in by_waiter.values():
        put_many = getattr(waiter, "put_many", None)
        if put_many is not None:
            put_many(items)
        else:
            for job_id, outcome in items:
                waiter.put(job_id, outcome)


class CountdownWaiter:
    """Thread-side waiter for a set of jobs: one Event for the whole set."""

    def __init__(self, count: int) -> None:
        self.results: dict[str, Outcome] = {}
        self._remaining = count
        self._lock = threading.Lock()
        self.done = threading.Event()
        if count == 0:
            self.done.set()

    def put(self, job_id: str, outcome: Outcome) -> None:
        self.put_many([(job_id, outcome)])

    def put_many(self, items: Iterable[tuple[str, Outcome]]) -> None:
        """Several outcomes under one lock; the event is set once, when the last arrives."""
        with self._lock:
            results = self.results
            for job_id, outcome in items:
                if job_id not in results:
                    results[job_id] = outcome
                    self._remaining -= 1
            if self._remaining <= 0:
                self.done.set()
