"""`sleep`: holds each batch for a fixed time, standing for GPU work.

Options: ``ms_per_batch`` (default 10). Returns each payload unchanged.
A payload ``{"exit": code}`` makes the worker process exit at once (crash tests).
"""

from __future__ import annotations

import os
import time
from typing import Any

from worker.handlers.base import Handler, HandlerContext


class SleepHandler(Handler):
    name = "sleep"

    def load(self, ctx: HandlerContext) -> None:
        super().load(ctx)
        self.ms_per_batch = float(ctx.options.get("ms_per_batch", 10))
        self.allow_exit = bool(ctx.options.get("allow_exit", False))
        if ctx.options.get("exit_on_load"):
            os._exit(int(ctx.options["exit_on_load"]))

    def run(self, batch: list[Any]) -> list[Any]:
        if self.allow_exit:
            for item in batch:
                if isinstance(item, dict) and "exit" in item:
                    os._exit(int(item["exit"]))
        time.sleep(self.ms_per_batch / 1000)
        return batch
