"""Write a batch's outcomes on a second thread while the next batch runs.

At most one write is in flight: the next `submit` first waits for the previous
one, so outcomes are never queued up unbounded, and an error of the write (a
refusal that cannot pass) surfaces in the main loop at the next batch or at
drain. The entries being written stay leased (`in_flight`) until their acks land.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor


class WriteBehind:
    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleet-writer")
        self._pending: Future[None] | None = None
        self.in_flight: tuple[str, ...] = ()

    def submit(self, write: Callable[[], None], entry_ids: tuple[str, ...]) -> None:
        self.wait()
        self.in_flight = entry_ids
        self._pending = self._pool.submit(write)

    def wait(self) -> None:
        """Block until the write in flight (if any) is done; re-raise its error."""
        pending, self._pending = self._pending, None
        try:
            if pending is not None:
                pending.result()
        finally:
            self.in_flight = ()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)
