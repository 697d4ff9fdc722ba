"""Adopting the workers a previous scaler left running on this host.

A scaler that exits with ``stop_workers_on_exit: false`` (or is killed) leaves its
workers serving. The next scaler on the host finds them in the registry
(``fleet:workers``: pid, host, queue, device, started_ms) and takes them over
instead of starting duplicates. An entry is adopted only when all of these hold:

- its ``host`` is this host's name and its pid is alive (not a zombie);
- the process is provably that worker: its cgroup v2 path is the leaf
  ``<slice>/<device>/<worker id>`` under our slice, or, where it is not in our
  slice (cgroups unavailable now or then), its command line is
  ``python -m worker`` and it started just before the entry's ``started_ms``
  (so a reused pid is not mistaken for the worker).

An entry of this host whose pid is gone is stale and is deleted. An adopted
worker has no ``Popen``: ``AdoptedProcess`` polls ``/proc/<pid>/stat`` (same pid
*and* same start time), retires with SIGTERM, and is forced through its leaf's
``cgroup.kill`` or ``killpg`` like any other worker. Its exit status is unknown
(``UNKNOWN_RC``): the process is not our child.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fleet import codec
from scheduler.cgroups import CgroupError, Leaf, SliceManager, leaf_of_pid

UNKNOWN_RC = -255  # the exit status of a process that is not our child
START_SLACK_MS = 2_000  # clock rounding between /proc start time and started_ms
START_WINDOW_MS = 300_000  # a worker registers within this long of its exec


class WorkerProcess(Protocol):
    """What the supervisor needs of a worker process: a Popen or an adopted one."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def terminate(self) -> None: ...


def start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def start_epoch_ms(ticks: int) -> int:
    """Wall-clock start time of a process from its start ticks."""
    boot_s = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                  if line.startswith("btime "))
    return int((boot_s + ticks / os.sysconf("SC_CLK_TCK")) * 1000)


def is_worker_cmdline(pid: int) -> bool:
    """True when PID runs ``<python> -m worker``."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return (len(argv) >= 3 and b"python" in Path(argv[0].decode(errors="replace")).name.encode()
            and argv[1:3] == [b"-m", b"worker"])


class AdoptedProcess:
    """A worker we did not start: polled through /proc, signalled by pid."""

    def __init__(self, pid: int, ticks: int) -> None:
        self._pid = pid
        self._ticks = ticks
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        return self._pid

    def poll(self) -> int | None:
        if self.returncode is None and start_ticks(self._pid) != self._ticks:
            self.returncode = UNKNOWN_RC
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self._pid}", timeout or 0.0)
            time.sleep(0.02)
        return code

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


@dataclass(frozen=True)
class Candidate:
    """A registry entry proven to be a live worker of this host."""

    worker_id: str
    queue: str
    device_id: str
    started_ms: int
    process: AdoptedProcess
    leaf: Leaf | None
    proof: str  # "cgroup leaf" | "command line"


def decode_registry(raw: Mapping[Any, Any]) -> dict[str, dict[str, Any]]:
    """HGETALL of a name -> msgpack map hash (``fleet:workers``, ``fleet:hosts``) -> dict;
    undecodable entries dropped."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        worker_id = key.decode() if isinstance(key, bytes) else str(key)
        try:
            entry = codec.unpack(value if isinstance(value, bytes) else str(value).encode())
        except codec.DecodeError:  # a corrupt entry is not a worker we can adopt
            continue
        if isinstance(entry, dict):
            out[worker_id] = entry
    return out


def _our_leaf(pid: int, worker_id: str, slices: SliceManager | None) -> Leaf | bool | None:
    """The worker's leaf when PID sits in ``<slice>/<device>/<worker_id>``; False when
    it sits in our slice under another name (a reused pid); None when outside it."""
    if slices is None or not slices.available or slices.root is None:
        return None
    try:
        path = leaf_of_pid(pid)
    except (ProcessLookupError, CgroupError):
        return None
    if not path.startswith(f"/{slices.base}/"):
        return None
    if path.rsplit("/", 1)[-1] != worker_id:
        return False
    return Leaf(slices.root / path.lstrip("/"))


def _started_as_registered(ticks: int, started_ms: int) -> bool:
    begun = start_epoch_ms(ticks)
    return begun <= started_ms + START_SLACK_MS and started_ms - begun <= START_WINDOW_MS


def match_entry(worker_id: str, entry: Mapping[str, Any], slices: SliceManager | None
                ) -> Candidate | None:
    """A Candidate when the entry's pid is provably that worker, else None."""
    pid, started_ms = entry.get("pid"), entry.get("started_ms")
    if not isinstance(pid, int) or not isinstance(started_ms, int) or pid <= 1:
        return None
    ticks = start_ticks(pid)
    if ticks is None:
        return None
    leaf = _our_leaf(pid, worker_id, slices)
    if leaf is False:
        return None
    if not isinstance(leaf, Leaf):
        leaf = None
    if leaf is not None:
        proof = "cgroup leaf"
    elif is_worker_cmdline(pid) and _started_as_registered(ticks, started_ms):
        proof = "command line"
    else:
        return None
    return Candidate(worker_id, str(entry.get("queue")), str(entry.get("device")), started_ms,
                     AdoptedProcess(pid, ticks), leaf, proof)


def find_adoptable(
    registry: Mapping[str, Mapping[str, Any]],
    host: str,
    slices: SliceManager | None,
    managed: set[str],
) -> tuple[list[Candidate], list[str]]:
    """(workers of this host to adopt, ids of this host's entries whose pid is gone)."""
    found: list[Candidate] = []
    stale: list[str] = []
    for worker_id, entry in registry.items():
        if entry.get("host") != host or worker_id in managed:
            continue
        candidate = match_entry(worker_id, entry, slices)
        if candidate is not None:
            found.append(candidate)
        elif not isinstance(entry.get("pid"), int) or start_ticks(int(entry["pid"])) is None:
            stale.append(worker_id)
    return found, stale
