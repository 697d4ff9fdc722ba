"""The handler contract and the registry of handlers by name.

A queue names one handler in the fleet config; a job never names code. Built-in
handlers and users' own models are found through the ``fleet.handlers``
entry-point group (``name = "package.module:Class"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from fleet.errors import ConfigError

ENTRY_POINT_GROUP = "fleet.handlers"


@dataclass(frozen=True)
class HandlerContext:
    queue: str
    device_vendor: str  # "cpu" | "nvidia" | "amd" | "sim"
    cpu_count: int
    options: dict[str, Any] = field(default_factory=dict)


class JobError:
    """Returned by `run` in place of a result: that one job failed, with this message."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    def __repr__(self) -> str:
        return f"JobError({self.message!r})"


class Handler:
    """Subclass and register under ``fleet.handlers``.

    `load` runs once per worker after it is pinned; `validate` checks one payload
    (raise ValueError/TypeError with a readable message to fail that job alone);
    `run` takes a batch of validated payloads and returns one result per item,
    in order (a `JobError` in a slot fails only that job).
    """

    name = "handler"

    def load(self, ctx: HandlerContext) -> None:
        self.ctx = ctx

    def validate(self, payload: Any) -> Any:
        return payload

    def run(self, batch: list[Any]) -> list[Any]:
        raise NotImplementedError

    def idle(self) -> None:
        """Called once when the queue runs dry after work: give back what can be given."""


def load_handler(name: str) -> Handler:
    """Instantiate the handler registered under `name`."""
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        known = sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
        raise ConfigError(f"unknown handler {name!r} (registered: {', '.join(known) or 'none'})")
    cls = found[0].load()
    if not (isinstance(cls, type) and issubclass(cls, Handler)):
        raise ConfigError(f"handler {name!r} ({found[0].value}) is not a fleet Handler class")
    return cls()


def registered_handlers() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
