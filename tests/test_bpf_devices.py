"""eBPF cgroup device filter: pure rule computation, and the real kernel on ordinary nodes."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.bpf_devices import (
    ALU64_MOV_K,
    EXIT,
    STANDARD_RULES,
    Rule,
    assemble,
    attach_device_allowlist,
    attach_program,
    attached_programs,
    char_majors,
    encode,
    gpu_allow_rules,
)
from scheduler.cgroups import Leaf, SliceManager, enter_command
from scheduler.devices import Device

PROC_DEVICES = """\
Character devices:
  1 mem
195 nvidia-frontend
226 drm
234 kfd
510 nvidia-uvm

Block devices:
  7 loop
259 blkext
"""

NVIDIA = Device("nvidia-GPU-x", "nvidia", 1, "GPU-x", "NVIDIA H100", 80 * 2**30)
AMD = Device("amd-abc", "amd", 0, "GPU-abc", "MI300X", 192 * 2**30)
CPU = Device("cpu", "cpu", 0, None, "CPU x2", None, (0, 1))


def labels(rules: list[Rule]) -> set[str]:
    return {r.label for r in rules if r not in STANDARD_RULES}


def test_char_majors_reads_only_character_devices() -> None:
    assert char_majors(PROC_DEVICES) == {"mem": 1, "nvidia-frontend": 195, "drm": 226,
                                         "kfd": 234, "nvidia-uvm": 510}


def test_nvidia_rules_allow_own_gpu_and_control_nodes() -> None:
    rules = gpu_allow_rules(NVIDIA, nvidia_minor=3, majors=char_majors(PROC_DEVICES))
    assert labels(rules) == {"/dev/nvidia3", "/dev/nvidiactl", "/dev/nvidia-modeset",
                             "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"}
    assert Rule("c", 195, 3, label="/dev/nvidia3") in rules
    assert Rule("c", 510, 1, label="/dev/nvidia-uvm-tools") in rules
    assert not any(r.major == 195 and r.minor in (0, 1, 2) for r in rules)  # other GPUs


def test_amd_rules_allow_kfd_and_own_render_node() -> None:
    rules = gpu_allow_rules(AMD, render_minor=129, majors=char_majors(PROC_DEVICES))
    assert labels(rules) == {"/dev/kfd", "/dev/dri/renderD129"}
    assert Rule("c", 226, 129, label="/dev/dri/renderD129") in rules


def test_cpu_device_gets_standard_nodes_only() -> None:
    rules = gpu_allow_rules(CPU, majors=char_majors(PROC_DEVICES))
    assert rules == STANDARD_RULES
    assert {r.label for r in rules} >= {"/dev/null", "/dev/zero", "/dev/full", "/dev/random",
                                        "/dev/urandom", "/dev/tty", "/dev/ptmx", "/dev/pts/*"}


def test_gpu_rules_need_their_node_number() -> None:
    with pytest.raises(ValueError, match="NVML minor"):
        gpu_allow_rules(NVIDIA)
    with pytest.raises(ValueError, match="renderD"):
        gpu_allow_rules(AMD)


def test_program_shape() -> None:
    program = assemble([Rule("c", 1, 3), Rule("b", 7, None, "r")])
    # prologue 6; c 1:3 = 3 checks + 2; b 7:* read-only = 2 checks + 3 access + 2; deny 2
    assert len(program) == 6 + 5 + 7 + 2
    assert program[-2:] == [(ALU64_MOV_K, 0, 0, 0, 0), (EXIT, 0, 0, 0, 0)]
    assert len(encode(program)) == 8 * len(program)


# --------------------------------------------------------------------------- real kernel

PROBE = """
import json, os, sys
out = {}
for path, flags in [("/dev/null", os.O_RDWR), ("/dev/null", os.O_RDONLY),
                    ("/dev/zero", os.O_RDONLY)]:
    try:
        os.close(os.open(path, flags)); out[f"{path}:{flags}"] = 0
    except OSError as e:
        out[f"{path}:{flags}"] = e.errno
print(json.dumps(out))
"""


@pytest.fixture
def leaf(slice_manager: SliceManager) -> Leaf:
    return slice_manager.create_leaf("sim-0", "w1")


def probe_in(leaf: Leaf) -> dict[str, int]:
    argv = enter_command(leaf.path, [sys.executable, "-c", PROBE])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, int] = json.loads(proc.stdout)
    return result


RDWR, RDONLY = f":{os.O_RDWR}", f":{os.O_RDONLY}"


def test_leaf_may_open_allowed_node_only(leaf: Leaf) -> None:
    result = attach_device_allowlist(leaf.path, [Rule("c", 1, 3, label="/dev/null")])
    assert result.ok, f"{result.reason}\n{result.verifier_log}"
    assert attached_programs(leaf.path) == 1
    assert probe_in(leaf) == {"/dev/null" + RDWR: 0, "/dev/null" + RDONLY: 0,
                              "/dev/zero" + RDONLY: errno.EPERM}
    with open("/dev/zero", "rb") as outside:  # a process outside the leaf is untouched
        assert outside.read(4) == b"\0\0\0\0"


def test_any_minor_and_access_bits(leaf: Leaf) -> None:
    result = attach_device_allowlist(leaf.path, [Rule("c", 1, None, "r")])
    assert result.ok, result.reason
    assert probe_in(leaf) == {"/dev/null" + RDWR: errno.EPERM, "/dev/null" + RDONLY: 0,
                              "/dev/zero" + RDONLY: 0}


def test_no_rules_denies_every_device(leaf: Leaf) -> None:
    assert attach_device_allowlist(leaf.path, []).ok
    assert set(probe_in(leaf).values()) == {errno.EPERM}


def test_verifier_rejection_is_reported_with_its_log(leaf: Leaf) -> None:
    result = attach_program(leaf.path, [(EXIT, 0, 0, 0, 0)], "a program without r0")
    assert not result.ok
    assert result.errno == errno.EACCES
    assert "BPF_PROG_LOAD: EACCES" in result.reason
    assert "R0 !read_ok" in result.verifier_log
    assert attached_programs(leaf.path) == 0


def test_attach_to_missing_leaf_says_so(tmp_path: Path) -> None:
    result = attach_device_allowlist(tmp_path / "gone", [Rule("c", 1, 3)])
    assert not result.ok and result.errno == errno.ENOENT
    assert "ENOENT" in result.reason
