"""The submit coalescer (group commit of concurrent one-job submits), driven with a
fake `run` so every scenario is deterministic and needs no Redis."""

from __future__ import annotations

import threading

import pytest

from fleet.errors import QueueFull
from fleet.submit import Coalescer


class FakeQueue:
    """Appends jobs like the submit script; the first call blocks until released."""

    def __init__(self, capacity: int = 1_000_000, hold_first: bool = False) -> None:
        self.capacity, self.length, self.calls = capacity, 0, []
        self.entered, self.release = threading.Event(), threading.Event()
        self.hold_first = hold_first
        self.lock = threading.Lock()

    def run(self, queue: str, encoded: list[bytes]) -> list[str]:
        if self.hold_first and not self.calls:
            self.calls.append(list(encoded))
            self.entered.set()
            self.release.wait(5)
        else:
            self.calls.append(list(encoded))
        with self.lock:
            if self.length + len(encoded) > self.capacity:
                raise QueueFull(queue, self.capacity)
            first = self.length
            self.length += len(encoded)
        return [f"1-{first + i}" for i in range(len(encoded))]


def test_a_lone_submit_is_sent_at_once() -> None:
    fake = FakeQueue()
    assert Coalescer(fake.run, QueueFull).submit("q", b"a") == "1-0"
    assert fake.calls == [[b"a"]]


def test_submits_that_arrive_during_a_call_share_the_next_one() -> None:
    fake = FakeQueue(hold_first=True)
    coalescer = Coalescer(fake.run, QueueFull)
    ids: dict[bytes, str] = {}

    def submit(payload: bytes) -> None:
        ids[payload] = coalescer.submit("q", payload)

    first = threading.Thread(target=submit, args=(b"first",))
    first.start()
    assert fake.entered.wait(5)
    others = [threading.Thread(target=submit, args=(bytes([65 + i]),)) for i in range(5)]
    for thread in others:
        thread.start()
    while sum(len(v) for v in coalescer._waiting.values()) < 5:  # all five queued behind the call
        threading.Event().wait(0.001)
    fake.release.set()
    for thread in [first, *others]:
        thread.join(5)
    assert fake.calls[0] == [b"first"] and sorted(fake.calls[1]) == [bytes([65 + i]) for i in range(5)]
    assert len(fake.calls) == 2 and len(set(ids.values())) == 6


def test_a_shared_call_that_finds_the_queue_full_is_retried_job_by_job() -> None:
    fake = FakeQueue(capacity=3, hold_first=True)
    coalescer = Coalescer(fake.run, QueueFull)
    results: dict[bytes, object] = {}

    def submit(payload: bytes) -> None:
        try:
            results[payload] = coalescer.submit("q", payload)
        except QueueFull as exc:
            results[payload] = exc

    first = threading.Thread(target=submit, args=(b"0",))
    first.start()
    assert fake.entered.wait(5)
    others = [threading.Thread(target=submit, args=(str(i).encode(),)) for i in range(1, 5)]
    for thread in others:
        thread.start()
    while sum(len(v) for v in coalescer._waiting.values()) < 4:
        threading.Event().wait(0.001)
    fake.release.set()
    for thread in [first, *others]:
        thread.join(5)
    admitted = [v for v in results.values() if isinstance(v, str)]
    refused = [v for v in results.values() if isinstance(v, QueueFull)]
    assert len(admitted) == 3 and len(refused) == 2  # each admitted exactly as it would be alone


def test_an_error_reaches_every_submit_of_the_call() -> None:
    def broken(queue: str, encoded: list[bytes]) -> list[str]:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        Coalescer(broken, QueueFull).submit("q", b"a")
