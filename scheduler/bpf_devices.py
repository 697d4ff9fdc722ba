"""Device isolation for a worker leaf: an eBPF cgroup device program, by hand.

cgroup v2 has no ``devices.allow`` file; the kernel asks a BPF_PROG_TYPE_CGROUP_DEVICE
program attached to the cgroup instead. This module assembles that program in
Python (no bcc, no clang), loads it with the raw ``bpf(2)`` syscall through ctypes
and attaches it to the leaf directory. The program allows the listed
(type, major, minor, access) rules and denies every other char and block device.

The rules a worker needs are computed by a pure function, ``gpu_allow_rules``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from scheduler.devices import Device

# uapi/linux/bpf.h
SYS_BPF = {"x86_64": 321, "aarch64": 280}
BPF_PROG_LOAD, BPF_PROG_ATTACH, BPF_PROG_QUERY = 5, 8, 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR = 1, 2
BPF_DEVCG_ACC_MKNOD, BPF_DEVCG_ACC_READ, BPF_DEVCG_ACC_WRITE = 1, 2, 4
_ACCESS = {"m": BPF_DEVCG_ACC_MKNOD, "r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE}

# opcodes used (class | op | source)
LDX_MEM_W = 0x61  # dst = *(u32 *)(src + off)
ALU32_MOV_X = 0xBC  # dst = (u32) src
ALU32_AND_K = 0x54  # dst &= imm
ALU32_RSH_K = 0x74  # dst >>= imm
ALU64_MOV_K = 0xB7  # dst = imm
JNE_K = 0x55  # if dst != imm: pc += off
EXIT = 0x95

Insn = tuple[int, int, int, int, int]  # opcode, dst, src, off, imm


@dataclass(frozen=True)
class Rule:
    type: Literal["c", "b"]
    major: int
    minor: int | None  # None: any minor
    access: str = "rwm"
    label: str = ""  # the node it stands for, for logs and docs


@dataclass(frozen=True)
class AttachResult:
    ok: bool
    reason: str
    errno: int | None = None
    verifier_log: str = ""


class BpfLoadError(OSError):
    """BPF_PROG_LOAD failed; ``verifier_log`` says why when the verifier rejected it."""

    def __init__(self, err: int, verifier_log: str) -> None:
        super().__init__(err, os.strerror(err))
        self.verifier_log = verifier_log


def _rule_block(rule: Rule) -> list[Insn]:
    """Instructions that return 1 when the request matches ``rule``, else fall through."""
    checks: list[Insn] = [
        (JNE_K, 3, 0, 0, BPF_DEVCG_DEV_CHAR if rule.type == "c" else BPF_DEVCG_DEV_BLOCK),
        (JNE_K, 4, 0, 0, rule.major),
    ]
    if rule.minor is not None:
        checks.append((JNE_K, 5, 0, 0, rule.minor))
    allowed = sum(_ACCESS[a] for a in set(rule.access))
    if allowed != 7:  # deny a request that asks for any access the rule does not grant
        checks += [(ALU32_MOV_X, 0, 2, 0, 0), (ALU32_AND_K, 0, 0, 0, 7 & ~allowed),
                   (JNE_K, 0, 0, 0, 0)]
    block = [*checks, (ALU64_MOV_K, 0, 0, 0, 1), (EXIT, 0, 0, 0, 0)]
    # every conditional jump skips to the end of this block
    return [(op, d, s, len(block) - i - 1 if op == JNE_K else off, imm)
            for i, (op, d, s, off, imm) in enumerate(block)]


def assemble(rules: list[Rule]) -> list[Insn]:
    """The whole program: load the request, try each rule, deny by default."""
    prologue: list[Insn] = [
        (LDX_MEM_W, 2, 1, 0, 0),  # r2 = ctx->access_type  ((access << 16) | type)
        (ALU32_MOV_X, 3, 2, 0, 0),  # r3 = r2
        (ALU32_AND_K, 3, 0, 0, 0xFFFF),  # r3 = type
        (ALU32_RSH_K, 2, 0, 0, 16),  # r2 = access
        (LDX_MEM_W, 4, 1, 4, 0),  # r4 = ctx->major
        (LDX_MEM_W, 5, 1, 8, 0),  # r5 = ctx->minor
    ]
    body = [insn for rule in rules for insn in _rule_block(rule)]
    return [*prologue, *body, (ALU64_MOV_K, 0, 0, 0, 0), (EXIT, 0, 0, 0, 0)]


def encode(program: list[Insn]) -> bytes:
    return b"".join(struct.pack("<BBhi", op, (src << 4) | dst, off, imm)
                    for op, dst, src, off, imm in program)


class _ProgLoadAttr(ctypes.Structure):
    _fields_ = [
        ("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64), ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32), ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", ctypes.c_uint32), ("expected_attach_type", ctypes.c_uint32),
    ]


class _AttachAttr(ctypes.Structure):
    _fields_ = [
        ("target_fd", ctypes.c_uint32), ("attach_bpf_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32),
        ("replace_bpf_fd", ctypes.c_uint32),
    ]


class _QueryAttr(ctypes.Structure):
    _fields_ = [
        ("target_fd", ctypes.c_uint32), ("attach_type", ctypes.c_uint32),
        ("query_flags", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32),
        ("prog_ids", ctypes.c_uint64), ("prog_cnt", ctypes.c_uint32),
    ]


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    """bpf(cmd, &attr, sizeof attr); raises OSError with the kernel's errno."""
    number = SYS_BPF.get(os.uname().machine)
    if number is None:
        raise OSError(errno.ENOSYS, f"bpf syscall number unknown for {os.uname().machine}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(ctypes.c_long(number), ctypes.c_long(cmd), ctypes.byref(attr),
                       ctypes.c_long(ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def load_program(program: list[Insn], log_size: int = 1 << 16) -> int:
    """BPF_PROG_LOAD of a cgroup device program; returns its fd.

    On failure raises BpfLoadError with the kernel's errno and verifier log."""
    code = encode(program)
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(log_size)
    attr = _ProgLoadAttr(
        prog_type=BPF_PROG_TYPE_CGROUP_DEVICE, insn_cnt=len(code) // 8,
        insns=ctypes.addressof(insns), license=ctypes.addressof(license_),
        prog_name=b"fleet_devices", expected_attach_type=BPF_CGROUP_DEVICE,
    )
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except OSError:
        attr.log_level, attr.log_size, attr.log_buf = 1, log_size, ctypes.addressof(log)
        try:  # load again with the verifier log on, to say why
            return _bpf(BPF_PROG_LOAD, attr)
        except OSError as exc:
            raise BpfLoadError(exc.errno or 0, log.value.decode(errors="replace")) from None


def attach_device_allowlist(leaf_path: Path, rules: list[Rule]) -> AttachResult:
    """Allow only ``rules`` to processes in ``leaf_path`` (and below); deny other devices."""
    return attach_program(leaf_path, assemble(rules), f"{len(rules)} device rules")


def attach_program(leaf_path: Path, program: list[Insn], what: str) -> AttachResult:
    """Load ``program`` and attach it to ``leaf_path`` as its device filter."""
    try:
        prog_fd = load_program(program)
    except OSError as exc:
        log = exc.verifier_log if isinstance(exc, BpfLoadError) else ""
        return AttachResult(False, f"BPF_PROG_LOAD: {_errname(exc)} ({exc.strerror})"
                            + (": verifier rejected the program" if log else ""),
                            exc.errno, log)
    try:
        cg_fd = os.open(leaf_path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        os.close(prog_fd)
        return AttachResult(False, f"open {leaf_path}: {_errname(exc)}", exc.errno)
    try:
        _bpf(BPF_PROG_ATTACH, _AttachAttr(target_fd=cg_fd, attach_bpf_fd=prog_fd,
                                          attach_type=BPF_CGROUP_DEVICE,
                                          attach_flags=BPF_F_ALLOW_MULTI))
    except OSError as exc:
        return AttachResult(False, f"BPF_PROG_ATTACH to {leaf_path}: {_errname(exc)} "
                            f"({exc.strerror})", exc.errno)
    finally:
        os.close(cg_fd)
        os.close(prog_fd)  # the cgroup keeps the program alive until it is removed
    return AttachResult(True, f"{what} attached to {leaf_path}")


def attached_programs(leaf_path: Path) -> int:
    """How many device programs are attached directly to ``leaf_path`` (BPF_PROG_QUERY)."""
    ids = (ctypes.c_uint32 * 64)()
    fd = os.open(leaf_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        attr = _QueryAttr(target_fd=fd, attach_type=BPF_CGROUP_DEVICE,
                          prog_ids=ctypes.addressof(ids), prog_cnt=64)
        _bpf(BPF_PROG_QUERY, attr)
    finally:
        os.close(fd)
    return int(attr.prog_cnt)


def _errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


# --------------------------------------------------------------------------- rules

NVIDIA_MAJOR = 195  # /dev/nvidia<N>, nvidiactl (255), nvidia-modeset (254)
DRM_MAJOR = 226  # /dev/dri/card<N>, renderD<N>
PTS_MAJORS = range(136, 144)  # Unix98 pty slaves, /dev/pts/*

STANDARD_RULES = [
    Rule("c", 1, 3, label="/dev/null"),
    Rule("c", 1, 5, label="/dev/zero"),
    Rule("c", 1, 7, label="/dev/full"),
    Rule("c", 1, 8, label="/dev/random"),
    Rule("c", 1, 9, label="/dev/urandom"),
    Rule("c", 5, 0, label="/dev/tty"),
    Rule("c", 5, 2, label="/dev/ptmx"),
    *(Rule("c", m, None, label="/dev/pts/*") for m in PTS_MAJORS),
]


def char_majors(proc_devices_text: str) -> dict[str, int]:
    """{driver name: major} for the character devices in /proc/devices text."""
    majors: dict[str, int] = {}
    section = ""
    for line in proc_devices_text.splitlines():
        if line.endswith("devices:"):
            section = line
            continue
        parts = line.split()
        if section.startswith("Character") and len(parts) == 2 and parts[0].isdigit():
            majors.setdefault(parts[1], int(parts[0]))
    return majors


def read_char_majors() -> dict[str, int]:
    return char_majors(Path("/proc/devices").read_text())


def gpu_allow_rules(
    device: Device,
    *,
    nvidia_minor: int | None = None,
    render_minor: int | None = None,
    majors: Mapping[str, int] | None = None,
) -> list[Rule]:
    """The device nodes a worker on ``device`` may open (pure).

    ``nvidia_minor`` is NVML's minor number of the GPU; ``render_minor`` the N of
    /dev/dri/renderD<N> of an AMD GPU; ``majors`` the char majors from /proc/devices
    (for the dynamically numbered nvidia-uvm and kfd). A CPU or simulated device
    gets the standard nodes only: no GPU at all.
    """
    majors = majors or {}
    rules = list(STANDARD_RULES)
    if device.vendor == "nvidia":
        if nvidia_minor is None:
            raise ValueError(f"{device.id}: the NVML minor number is needed for its rules")
        rules += [
            Rule("c", NVIDIA_MAJOR, nvidia_minor, label=f"/dev/nvidia{nvidia_minor}"),
            Rule("c", NVIDIA_MAJOR, 255, label="/dev/nvidiactl"),
            Rule("c", NVIDIA_MAJOR, 254, label="/dev/nvidia-modeset"),
        ]
        if "nvidia-uvm" in majors:
            uvm = majors["nvidia-uvm"]
            rules += [Rule("c", uvm, 0, label="/dev/nvidia-uvm"),
                      Rule("c", uvm, 1, label="/dev/nvidia-uvm-tools")]
    elif device.vendor == "amd":
        if render_minor is None:
            raise ValueError(f"{device.id}: the renderD number is needed for its rules")
        rules.append(Rule("c", DRM_MAJOR, render_minor, label=f"/dev/dri/renderD{render_minor}"))
        if "kfd" in majors:
            rules.append(Rule("c", majors["kfd"], 0, label="/dev/kfd"))
    return rules
