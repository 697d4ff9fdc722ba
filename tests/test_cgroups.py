"""cgroup v2 slices on this host's real cgroup2 mount (no kernel mocks)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from scheduler import cgroups
from scheduler.cgroups import (
    ENTER_FAILED_RC,
    CgroupBusy,
    CgroupUnavailable,
    Leaf,
    Limits,
    SliceManager,
    cgroup2_root,
    enter_command,
    find_cgroup2_mount,
    leaf_of_pid,
)
from scheduler.spawn import open_slice_manager, spawn_in_leaf, stop

HYBRID = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
UNIFIED = "sysfs /sys sysfs rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n"
ESCAPED = "cgroup2 /mnt/my\\040cgroups cgroup2 rw 0 0\n"
V1_ONLY = "cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n"


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (HYBRID, Path("/sys/fs/cgroup/unified")),
        (UNIFIED, Path("/sys/fs/cgroup")),
        (ESCAPED, Path("/mnt/my cgroups")),
        (V1_ONLY, None),
        ("", None),
    ],
    ids=["hybrid host", "unified host", "escaped mount point", "v1 only", "empty"],
)
def test_find_cgroup2_mount(text: str, want: Path | None) -> None:
    assert find_cgroup2_mount(text) == want


def test_cgroup2_root_is_found_from_proc_mounts() -> None:
    root = cgroup2_root()
    assert root == find_cgroup2_mount(Path("/proc/mounts").read_text())
    assert cgroup2_root(Path("/elsewhere")) == Path("/elsewhere")


def test_limits_files() -> None:
    limits = Limits(cpus=(3, 1), memory_max_bytes=2**30, cpu_max_cores=1.5, pids_max=64)
    assert limits.files() == {"cpuset.cpus": "1,3", "memory.max": str(2**30),
                              "cpu.max": "150000 100000", "pids.max": "64"}


@pytest.fixture
def manager(slice_manager: SliceManager) -> SliceManager:
    return slice_manager


def wait_for(predicate: object, timeout_s: float = 5.0) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def start_in(leaf: Leaf, code: str) -> subprocess.Popen[str]:
    argv = enter_command(leaf.path, [sys.executable, "-c", code])
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_status_says_available(manager: SliceManager) -> None:
    assert manager.status.available
    assert str(manager.status).startswith(f"cgroup2 at {manager.root}")


def test_leaf_records_applied_and_unavailable_limits(manager: SliceManager) -> None:
    limits = Limits(cpus=(0,), memory_max_bytes=256 * 2**20, cpu_max_cores=0.5, pids_max=64)
    leaf = manager.create_leaf("sim-0", "w1", limits)
    assert manager.slice_path is not None
    assert leaf.path == manager.slice_path / "sim-0" / "w1"
    assert set(leaf.applied) | set(leaf.unavailable) == set(limits.files())
    for name, value in leaf.applied.items():  # whatever this kernel offers is really set
        assert (leaf.path / name).read_text().split() == value.split()
    for name in leaf.unavailable:  # and what it does not offer is really absent
        assert not (leaf.path / name).exists()
    leaf.remove()
    assert not leaf.path.exists() and not leaf.path.parent.exists()


def test_process_enters_leaf_before_it_runs(manager: SliceManager) -> None:
    leaf = manager.create_leaf("sim-0", "w1")
    proc = start_in(leaf, "print(open('/proc/self/cgroup').read())")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert manager.root is not None
    want = "/" + str(leaf.path.relative_to(manager.root))
    assert f"0::{want}" in out.splitlines()
    assert leaf.wait_empty(5.0)
    leaf.remove()


def test_kill_takes_the_whole_tree(manager: SliceManager) -> None:
    leaf = manager.create_leaf("sim-1", "w2")
    code = ("import subprocess, sys, time; "
            "c = subprocess.Popen(['sleep', '300']); print(c.pid, flush=True); time.sleep(300)")
    proc = start_in(leaf, code)
    assert proc.stdout is not None
    grandchild = int(proc.stdout.readline())
    assert manager.root is not None
    assert leaf_of_pid(proc.pid) == "/" + str(leaf.path.relative_to(manager.root))
    assert wait_for(lambda: sorted(leaf.procs()) == sorted([proc.pid, grandchild]))
    assert leaf.populated()
    with pytest.raises(CgroupBusy, match="still has processes"):
        leaf.remove()
    leaf.kill()
    assert leaf.wait_empty(5.0)
    assert proc.wait(timeout=5) == -9
    proc.communicate()
    assert wait_for(lambda: not pid_alive(grandchild))
    assert not leaf.populated() and leaf.procs() == []
    leaf.remove()


def test_kill_without_cgroup_kill_falls_back_to_sigkill(
    manager: SliceManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = cgroups._write

    def no_cgroup_kill(path: Path, value: str) -> None:  # an old kernel (< 5.14)
        if path.name == "cgroup.kill":
            raise FileNotFoundError(path)
        real_write(path, value)

    monkeypatch.setattr(cgroups, "_write", no_cgroup_kill)
    leaf = manager.create_leaf("sim-1", "w3")
    proc = start_in(leaf, "import time; print('up', flush=True); time.sleep(300)")
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    leaf.kill()
    assert leaf.wait_empty(5.0)
    assert proc.wait(timeout=5) == -9
    proc.communicate()
    leaf.remove()


def test_failed_entry_never_runs_the_command(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    argv = enter_command(tmp_path / "no-such-leaf", ["touch", str(marker)])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode == ENTER_FAILED_RC
    assert "fleet: cannot enter cgroup" in proc.stderr
    assert not marker.exists()


def test_bad_names_are_refused(manager: SliceManager) -> None:
    with pytest.raises(cgroups.CgroupError, match="bad cgroup name"):
        manager.create_leaf("../etc", "w1")
    with pytest.raises(cgroups.CgroupError, match="bad cgroup name"):
        manager.create_leaf("sim-0", "cgroup.procs")


@pytest.mark.parametrize(
    ("root", "reason"),
    [(None, "no cgroup2 mount in /proc/mounts"), ("tmp", "not a cgroup2 hierarchy: ")],
    ids=["no mount", "not cgroup2"],
)
def test_unavailable_slice_says_why(tmp_path: Path, root: str | None, reason: str) -> None:
    mgr = SliceManager(tmp_path if root == "tmp" else None)
    assert not mgr.available
    assert str(mgr.status).startswith(reason)
    with pytest.raises(CgroupUnavailable, match=reason.split(":")[0]):
        mgr.create_leaf("cpu", "w1")
    assert mgr.leaves() == [] or root is None


def test_leaf_of_pid_for_gone_process() -> None:
    with pytest.raises(ProcessLookupError):
        leaf_of_pid(2**22 + 1)


# --------------------------------------------------------------------------- spawn / stop

TREE = """
import signal, subprocess, sys, time
if sys.argv[1] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
child = subprocess.Popen(["sleep", "300"])
print(child.pid, flush=True)
time.sleep(300)
"""


def start_tree(leaf: Leaf | None, mode: str) -> tuple[subprocess.Popen[bytes], int]:
    proc = spawn_in_leaf([sys.executable, "-c", TREE, mode], env=None, leaf=leaf,
                         stdout=subprocess.PIPE)
    assert proc.stdout is not None
    grandchild = int(proc.stdout.readline())
    proc.stdout.close()
    return proc, grandchild


@pytest.mark.parametrize(("mode", "want_rc"), [("drains", 0), ("stubborn", -9)],
                         ids=["worker drains on SIGTERM", "worker ignores SIGTERM"])
def test_degraded_spawn_runs_as_process_group_and_stop_kills_tree(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str, want_rc: int
) -> None:
    with caplog.at_level(logging.WARNING, logger="fleet.scheduler"):
        mgr = open_slice_manager(tmp_path / f"not-cgroup2-{mode}")
    assert not mgr.available
    assert [r.getMessage() for r in caplog.records] == [
        f"cgroup v2 unavailable (not a cgroup2 hierarchy: {tmp_path}/not-cgroup2-{mode}): "
        "workers run as plain process groups, without cgroup limits or device isolation"
    ]
    proc, grandchild = start_tree(None, mode)
    assert os.getpgid(proc.pid) == proc.pid  # it leads its own group
    assert os.getpgid(grandchild) == proc.pid
    assert leaf_of_pid(proc.pid) == leaf_of_pid(os.getpid())  # no leaf: stays where we are
    assert stop(proc, None, drain_timeout_s=0.5) == want_rc
    assert wait_for(lambda: not pid_alive(grandchild))
    assert not pid_alive(proc.pid)


@pytest.mark.parametrize(("mode", "want_rc"), [("drains", 0), ("stubborn", -9)],
                         ids=["worker drains on SIGTERM", "worker ignores SIGTERM"])
def test_spawn_in_leaf_and_stop_removes_the_leaf(
    manager: SliceManager, mode: str, want_rc: int
) -> None:
    leaf = manager.create_leaf("cpu", f"w-{mode}")
    proc, grandchild = start_tree(leaf, mode)
    assert sorted(leaf.procs()) == sorted([proc.pid, grandchild])
    assert stop(proc, leaf, drain_timeout_s=0.5) == want_rc
    assert wait_for(lambda: not pid_alive(grandchild))
    assert not leaf.path.exists()


def test_slice_that_cannot_be_made_says_not_writable() -> None:
    root = cgroup2_root()
    if root is None:
        pytest.skip("no cgroup2 mount on this host")
    mgr = SliceManager(root, base=f"fleet-test-{uuid.uuid4().hex[:12]}/missing.slice")
    assert not mgr.available
    assert str(mgr.status) == f"not writable: {mgr.slice_path}: ENOENT"
