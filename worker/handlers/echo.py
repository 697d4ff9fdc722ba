"""`echo`: returns each payload as it came. The no-op job for tests and benchmarks."""

from __future__ import annotations

from typing import Any

from worker.handlers.base import Handler


class EchoHandler(Handler):
    name = "echo"

    def run(self, batch: list[Any]) -> list[Any]:
        return batch
