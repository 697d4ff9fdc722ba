"""`sleep`: holds each batch for a fixed time, standing for GPU work.

Options: ``ms_per_batch`` (default 10). Returns each payload unchanged.
Fault injection for tests, each off unless its option is set:
``allow_exit``: a payload ``{"exit": code}`` makes the worker process exit at once;
``allow_raise``: a payload ``{"raise": "message"}`` raises RuntimeError;
``allow_hang``: a payload ``{"hang_s": s}`` holds the batch s seconds;
``exit_on_load``: exit with that code while loading (a crash loop);
``trace_dir``: append "<payload> <pid>" per executed item to <trace_dir>/<pid>.log.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from worker.handlers.base import Handler, HandlerContext


class SleepHandler(Handler):
    name = "sleep"

    def load(self, ctx: HandlerContext) -> None:
        super().load(ctx)
        opts = ctx.options
        self.ms_per_batch = float(opts.get("ms_per_batch", 10))
        self.allow_exit = bool(opts.get("allow_exit", False))
        self.allow_raise = bool(opts.get("allow_raise", False))
        self.allow_hang = bool(opts.get("allow_hang", False))
        self.trace = Path(opts["trace_dir"]) / f"{os.getpid()}.log" if opts.get("trace_dir") else None
        if opts.get("exit_on_load"):
            os._exit(int(opts["exit_on_load"]))

    def run(self, batch: list[Any]) -> list[Any]:
        hang_s = 0.0
        for item in batch:
            if not isinstance(item, dict):
                continue
            if self.allow_exit and "exit" in item:
                os._exit(int(item["exit"]))
            if self.allow_raise and "raise" in item:
                raise RuntimeError(str(item["raise"]))
            if self.allow_hang and "hang_s" in item:
                hang_s = max(hang_s, float(item["hang_s"]))
        if self.trace is not None:
            with self.trace.open("a") as f:
                f.write("".join(f"{item!r} {os.getpid()}\n" for item in batch))
        time.sleep(self.ms_per_batch / 1000 + hang_s)
        return batch
