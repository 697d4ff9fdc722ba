"""cgroup v2 slices: one leaf per worker under ``<cgroup2>/fleet.slice/<device>/<worker>``.

The cgroup2 mount is found in /proc/mounts, never assumed. Controllers (cpuset, cpu,
memory, pids) are enabled in the parents' ``cgroup.subtree_control`` where the kernel
offers them, and each leaf records which limits were applied and which were not
available. Kernel rules kept here:

- no internal processes: a process only ever enters a leaf, never ``fleet.slice`` or
  a device directory (enabling controllers in a populated cgroup fails with EBUSY);
- a populated cgroup cannot be removed (EBUSY): kill, wait until empty, then rmdir;
- EACCES/EPERM/EROFS on the slice mean "not available", reported in ``status``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import select
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from fleet.errors import FleetError

CONTROLLERS = ("cpuset", "cpu", "memory", "pids")
CPU_PERIOD_US = 100_000
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class CgroupError(FleetError):
    """A cgroup operation failed in a way the caller must hear about."""


class CgroupUnavailable(CgroupError):
    """cgroup v2 cannot be used here; the message says exactly why."""


class CgroupBusy(CgroupError):
    """The cgroup still holds processes (EBUSY)."""


@dataclass(frozen=True)
class Limits:
    cpus: tuple[int, ...] | None = None  # cpuset.cpus
    memory_max_bytes: int | None = None  # memory.max
    cpu_max_cores: float | None = None  # cpu.max, as a number of cores
    pids_max: int | None = None  # pids.max

    def files(self) -> dict[str, str]:
        """The interface files and values these limits write."""
        out: dict[str, str] = {}
        if self.cpus is not None:
            out["cpuset.cpus"] = ",".join(str(c) for c in sorted(self.cpus))
        if self.memory_max_bytes is not None:
            out["memory.max"] = str(self.memory_max_bytes)
        if self.cpu_max_cores is not None:
            out["cpu.max"] = f"{round(self.cpu_max_cores * CPU_PERIOD_US)} {CPU_PERIOD_US}"
        if self.pids_max is not None:
            out["pids.max"] = str(self.pids_max)
        return out


@dataclass(frozen=True)
class SliceStatus:
    available: bool
    reason: str  # "cgroup2 at <path>" or exactly what is missing
    root: Path | None = None
    controllers: tuple[str, ...] = ()  # enabled for the slice's children

    def __str__(self) -> str:
        return self.reason


def _errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def _unescape(field_text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_text)


def find_cgroup2_mount(mounts_text: str) -> Path | None:
    """The first cgroup2 mount point in /proc/mounts text, or None."""
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return Path(_unescape(fields[1]))
    return None


def cgroup2_root(override: Path | None = None) -> Path | None:
    """``override`` if given, else the cgroup2 mount this host has (or None)."""
    if override is not None:
        return override
    try:
        return find_cgroup2_mount(Path("/proc/mounts").read_text())
    except OSError:
        return None


def _read(path: Path) -> str:
    return path.read_text()


def _write(path: Path, value: str) -> None:
    # one write() per value: cgroup files take a value per write call
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def enable_controllers(cgroup: Path, wanted: tuple[str, ...] = CONTROLLERS) -> dict[str, str]:
    """Enable ``wanted`` controllers for ``cgroup``'s children where it offers them.

    Returns {controller: why it is unavailable} for the ones that could not be enabled.
    """
    offered = set(_read(cgroup / "cgroup.controllers").split())
    enabled = set(_read(cgroup / "cgroup.subtree_control").split())
    missing: dict[str, str] = {}
    for name in wanted:
        if name in enabled:
            continue
        if name not in offered:
            missing[name] = f"not offered by {cgroup}"
            continue
        try:
            _write(cgroup / "cgroup.subtree_control", f"+{name}")
        except OSError as exc:
            hint = " (cgroup has processes: no-internal-processes rule)" \
                if exc.errno == errno.EBUSY else ""
            missing[name] = f"cannot enable in {cgroup}: {_errname(exc)}{hint}"
    return missing


@dataclass
class Leaf:
    """One worker's cgroup."""

    path: Path
    applied: dict[str, str] = field(default_factory=dict)  # file -> value written
    unavailable: dict[str, str] = field(default_factory=dict)  # file -> why not

    def procs(self) -> list[int]:
        try:
            return [int(p) for p in _read(self.path / "cgroup.procs").split()]
        except FileNotFoundError:
            return []

    def populated(self) -> bool:
        try:
            return "populated 1" in _read(self.path / "cgroup.events")
        except FileNotFoundError:
            return False

    def kill(self) -> None:
        """Kill every process in the leaf (and its descendants)."""
        try:
            _write(self.path / "cgroup.kill", "1")
            return
        except FileNotFoundError:
            if not self.path.exists():
                return
        # kernel < 5.14: no cgroup.kill; SIGKILL each pid until the leaf is empty
        deadline = time.monotonic() + 5.0
        while self.procs() and time.monotonic() < deadline:
            for pid in self.procs():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.wait_empty(0.05)

    def wait_empty(self, timeout_s: float) -> bool:
        """Wait until the leaf has no process; False if it still has one at the deadline."""
        deadline = time.monotonic() + timeout_s
        try:
            fd = os.open(self.path / "cgroup.events", os.O_RDONLY)
        except FileNotFoundError:
            return True
        try:
            poller = select.poll()
            poller.register(fd, select.POLLPRI | select.POLLERR)
            while True:
                if b"populated 0" in os.pread(fd, 4096, 0):
                    return True
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    return False
                # kernfs wakes poll() when cgroup.events changes; cap the wait anyway
                poller.poll(min(left_s, 0.05) * 1000)
        finally:
            os.close(fd)

    def remove(self) -> None:
        """rmdir the leaf, then its device directory if that is now empty."""
        try:
            self.path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise CgroupBusy(f"{self.path} still has processes {self.procs()}: "
                                 "kill it and wait_empty() before remove()") from exc
            raise CgroupError(f"cannot remove {self.path}: {_errname(exc)}") from exc
        with contextlib.suppress(OSError):  # other workers still on this device: ENOTEMPTY
            self.path.parent.rmdir()


class SliceManager:
    """Creates and finds worker leaves under ``<root>/<base>``."""

    def __init__(self, root: Path | None, base: str = "fleet.slice") -> None:
        self.root = root
        self.base = base
        self.status = self._probe()

    @property
    def available(self) -> bool:
        return self.status.available

    @property
    def slice_path(self) -> Path | None:
        return None if self.root is None else self.root / self.base

    def _probe(self) -> SliceStatus:
        if self.root is None:
            return SliceStatus(False, "no cgroup2 mount in /proc/mounts")
        if not (self.root / "cgroup.controllers").is_file():
            return SliceStatus(False, f"not a cgroup2 hierarchy: {self.root}", self.root)
        slice_path = self.root / self.base
        try:
            slice_path.mkdir(exist_ok=True)
            enable_controllers(self.root)
            missing = enable_controllers(slice_path)
        except OSError as exc:
            return SliceStatus(False, f"not writable: {slice_path}: {_errname(exc)}", self.root)
        enabled = tuple(c for c in CONTROLLERS if c not in missing)
        offered = ",".join(enabled) or "none"
        return SliceStatus(True, f"cgroup2 at {self.root} (controllers: {offered})",
                           self.root, enabled)

    def create_leaf(self, device_id: str, worker_id: str, limits: Limits | None = None) -> Leaf:
        """Make ``<slice>/<device_id>/<worker_id>`` and apply ``limits`` where offered."""
        if not self.status.available or self.slice_path is None:
            raise CgroupUnavailable(self.status.reason)
        for name in (device_id, worker_id):
            if not _NAME.fullmatch(name) or name.startswith("cgroup."):
                raise CgroupError(f"bad cgroup name {name!r}: use letters, digits, _ . -")
        device_dir = self.slice_path / device_id
        try:
            device_dir.mkdir(exist_ok=True)
            missing = enable_controllers(device_dir)
            (device_dir / worker_id).mkdir()
        except FileExistsError as exc:
            raise CgroupError(f"leaf {device_dir / worker_id} already exists") from exc
        except OSError as exc:
            raise CgroupError(f"cannot create leaf under {device_dir}: {_errname(exc)}") from exc
        leaf = Leaf(device_dir / worker_id)
        _apply_limits(leaf, limits or Limits(), missing)
        return leaf

    def leaves(self) -> list[Leaf]:
        """Every worker leaf under the slice (for reaping after a restart)."""
        if self.slice_path is None or not self.slice_path.is_dir():
            return []
        return [Leaf(p) for d in sorted(self.slice_path.iterdir()) if d.is_dir()
                for p in sorted(d.iterdir()) if p.is_dir()]

    def remove_slice(self, timeout_s: float = 5.0) -> None:
        """Kill and remove every leaf, then the slice itself (tests, uninstall)."""
        for leaf in self.leaves():
            leaf.kill()
            leaf.wait_empty(timeout_s)
            leaf.remove()
        if self.slice_path is not None:
            for device_dir in self.slice_path.iterdir() if self.slice_path.is_dir() else []:
                if device_dir.is_dir():
                    device_dir.rmdir()
            if self.slice_path.is_dir():
                self.slice_path.rmdir()


def _apply_limits(leaf: Leaf, limits: Limits, missing: dict[str, str]) -> None:
    for name, value in limits.files().items():
        controller = name.split(".", 1)[0]
        target = leaf.path / name
        if not target.exists():
            why = missing.get(controller, "controller not enabled")
            leaf.unavailable[name] = f"{controller} controller {why}"
            continue
        try:
            _write(target, value)
        except OSError as exc:
            leaf.unavailable[name] = f"write {value!r} failed: {_errname(exc)}"
            continue
        leaf.applied[name] = value


def enter_command(leaf_path: Path, argv: list[str]) -> list[str]:
    """argv that moves the process into ``leaf_path`` before ``argv[0]`` runs.

    The shell writes its own pid, then execs: same pid, no moment outside the leaf.
    If the write fails it exits 125 with a message and never runs ``argv``.
    """
    script = (
        'echo $$ > "$0/cgroup.procs" || '
        '{ echo "fleet: cannot enter cgroup $0; not starting $1" >&2; exit 125; }; '
        'exec "$@"'
    )
    return ["/bin/sh", "-c", script, str(leaf_path), *argv]


ENTER_FAILED_RC = 125


def leaf_of_pid(pid: int) -> str:
    """The cgroup v2 path of ``pid`` (the "0::" line of /proc/PID/cgroup)."""
    try:
        text = _read(Path(f"/proc/{pid}/cgroup"))
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise CgroupError(f"process {pid} has no cgroup v2 membership in /proc/{pid}/cgroup")
