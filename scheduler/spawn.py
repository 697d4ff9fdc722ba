"""Start and stop worker processes: in their cgroup leaf, or as a process group.

A worker is always a fresh ``exec`` (never a fork of the scaler: no CUDA state, no
locks or threads copied). With a leaf, ``enter_command`` puts the process in it
before any of its own code runs. Without one (cgroup v2 absent or not writable)
the worker leads its own session and process group, so its whole tree can still
be signalled; ``open_slice_manager`` logs why, once.

``stop`` drains in two stages: SIGTERM and wait up to ``drain_timeout_s``, then
force (``cgroup.kill`` or SIGKILL to the process group), reap, remove the leaf.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

from scheduler.cgroups import Leaf, SliceManager, cgroup2_root, enter_command

log = logging.getLogger("fleet.scheduler")

Stream = int | IO[Any] | None
FORCE_WAIT_S = 5.0
_warned: set[str] = set()


def open_slice_manager(root: Path | None = None, base: str = "fleet.slice") -> SliceManager:
    """The slice manager for this host; logs one line if cgroups are unavailable."""
    manager = SliceManager(cgroup2_root(root), base)
    if not manager.available and manager.status.reason not in _warned:
        _warned.add(manager.status.reason)
        log.warning("cgroup v2 unavailable (%s): workers run as plain process groups, "
                    "without cgroup limits or device isolation", manager.status.reason)
    return manager


def spawn_in_leaf(
    argv: Sequence[str],
    env: Mapping[str, str] | None,
    leaf: Leaf | None,
    stdin: Stream = subprocess.DEVNULL,
    stdout: Stream = None,
    stderr: Stream = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` (with the complete environment ``env``) in ``leaf``, or degraded.

    The process always leads a new session/process group, so a terminal's Ctrl-C
    reaches only the scaler, which drains workers itself.
    """
    command = enter_command(leaf.path, list(argv)) if leaf is not None else list(argv)
    if leaf is None:
        log.debug("starting %s as a process group (no cgroup leaf)", argv[0])
    return subprocess.Popen(
        command,
        env=dict(env) if env is not None else None,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        close_fds=True,
        start_new_session=True,
    )


class HasPid(Protocol):
    @property
    def pid(self) -> int: ...


def force_kill(proc: HasPid, leaf: Leaf | None) -> None:
    """SIGKILL everything the worker started: its leaf, or its process group.

    ``proc`` is a Popen or an adopted worker: anything with the pid that leads
    the worker's process group (every worker starts a new session).
    """
    if leaf is not None:
        leaf.kill()
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def stop(proc: subprocess.Popen[bytes], leaf: Leaf | None, drain_timeout_s: float) -> int:
    """Drain then force; reap; remove the leaf. Returns the worker's exit status.

    Whatever the worker left behind (children it started) is killed too, even
    when the worker itself exited cleanly.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=drain_timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("worker pid %d did not drain within %.1f s: killing it",
                        proc.pid, drain_timeout_s)
    force_kill(proc, leaf)  # the rest of the tree, or the worker itself if still running
    returncode = proc.wait(timeout=FORCE_WAIT_S)
    if leaf is not None:
        if not leaf.wait_empty(FORCE_WAIT_S):
            log.error("cgroup %s still has processes %s after kill", leaf.path, leaf.procs())
        else:
            leaf.remove()
    return returncode
