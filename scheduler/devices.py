"""Devices behind one small interface: one backend class per vendor.

Every backend imports its vendor library lazily, reports zero devices when the
library or driver is missing, owns its ``*_VISIBLE_DEVICES`` variables, and takes
its probe (the thing that talks to the library or sysfs) as a constructor
argument so tests can drive it. Nothing here imports torch or initialises CUDA.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


@dataclass(frozen=True)
class Device:
    id: str  # stable, filesystem/Redis safe: "cpu", "nvidia-<uuid>", "amd-<uuid-or-pci>", "sim-<n>"
    vendor: str  # "cpu" | "nvidia" | "amd" | "sim"
    index: int  # the vendor's own index (NVML index etc.)
    uuid: str | None
    name: str
    memory_total_bytes: int | None
    cpus: tuple[int, ...] = ()  # for cpu devices: the core set


@dataclass(frozen=True)
class Telemetry:
    utilization: float | None  # 0..1 fraction, None = unknown
    memory_used_bytes: int | None
    memory_total_bytes: int | None


UNKNOWN = Telemetry(None, None, None)


class DeviceBackend(Protocol):
    vendor: str

    def discover(self) -> list[Device]: ...

    def telemetry(self, device: Device) -> Telemetry: ...

    def pin_env(self, device: Device) -> dict[str, str]: ...

    def pin_process(self, device: Device) -> None: ...


def safe_id(text: str) -> str:
    """Make ``text`` safe as a path component and a Redis key part."""
    return _SAFE.sub("-", text).strip("-") or "unknown"


def _fraction(value: float | None) -> float | None:
    return None if value is None else min(max(float(value), 0.0), 1.0)


# --------------------------------------------------------------------------- NVIDIA


def _import_pynvml() -> Any:
    import pynvml  # nvidia-ml-py; lazily, so a host without it still imports us

    return pynvml


class NvidiaBackend:
    """NVIDIA GPUs through NVML (nvidia-ml-py). ``nvml_loader`` returns the module."""

    vendor = "nvidia"

    def __init__(self, nvml_loader: Callable[[], Any] = _import_pynvml) -> None:
        self._loader = nvml_loader
        self._nvml: Any = None
        self._failed = False

    def _lib(self) -> Any:
        if self._nvml is None and not self._failed:
            try:
                nvml = self._loader()
                nvml.nvmlInit()
            except Exception:  # missing library, missing driver, NVMLError_*: no devices
                self._failed = True
                return None
            self._nvml = nvml
        return self._nvml

    def discover(self) -> list[Device]:
        nvml = self._lib()
        if nvml is None:
            return []
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError:
            return []
        found: list[Device] = []
        for index in range(count):
            try:
                found.append(self._device(nvml, index))
            except nvml.NVMLError:
                continue  # a GPU that cannot even name itself is not schedulable
        return found

    @staticmethod
    def _device(nvml: Any, index: int) -> Device:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        name = _text(nvml.nvmlDeviceGetName(handle))
        try:
            total: int | None = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
        except nvml.NVMLError:
            total = None
        return Device(f"nvidia-{safe_id(uuid)}", "nvidia", index, uuid, name, total)

    def _handle(self, nvml: Any, device: Device) -> Any:
        if device.uuid:
            return nvml.nvmlDeviceGetHandleByUUID(device.uuid)
        return nvml.nvmlDeviceGetHandleByIndex(device.index)

    def telemetry(self, device: Device) -> Telemetry:
        nvml = self._lib()
        if nvml is None:
            return UNKNOWN
        try:
            handle = self._handle(nvml, device)
        except nvml.NVMLError:
            return UNKNOWN
        util: float | None = None
        used = total = None
        with contextlib.suppress(nvml.NVMLError):  # NotSupported (MIG, some boards): unknown
            util = _fraction(nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0)
        try:
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            used, total = int(mem.used), int(mem.total)
        except nvml.NVMLError:
            pass
        return Telemetry(util, used, total)

    def minor_number(self, device: Device) -> int | None:
        """The /dev/nvidia<minor> number of ``device``, for device isolation."""
        nvml = self._lib()
        if nvml is None:
            return None
        try:
            return int(nvml.nvmlDeviceGetMinorNumber(self._handle(nvml, device)))
        except nvml.NVMLError:
            return None

    def pin_env(self, device: Device) -> dict[str, str]:
        visible = device.uuid if device.uuid else str(device.index)
        return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": visible}

    def pin_process(self, device: Device) -> None:
        return None  # the environment does it; CUDA reads it at its first call


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------- AMD


def _import_pyamdgpuinfo() -> Any:
    try:
        import pyamdgpuinfo  # optional extra "amd"
    except ImportError:
        return None
    return pyamdgpuinfo


class AmdBackend:
    """AMD GPUs from amdgpu sysfs (``<root>/card*/device``), pyamdgpuinfo as a fallback."""

    vendor = "amd"

    def __init__(
        self,
        sysfs_root: Path = Path("/sys/class/drm"),
        info_loader: Callable[[], Any] = _import_pyamdgpuinfo,
    ) -> None:
        self._root = sysfs_root
        self._info_loader = info_loader

    def _cards(self) -> list[Path]:
        try:
            entries = list(self._root.iterdir())
        except OSError:
            return []
        cards = [p for p in entries if re.fullmatch(r"card\d+", p.name)]
        cards.sort(key=lambda p: int(p.name[4:]))
        return [p / "device" for p in cards if _read(p / "device" / "vendor") == "0x1002"]

    def discover(self) -> list[Device]:
        found = []
        for index, dev in enumerate(self._cards()):
            unique = _read(dev / "unique_id")
            pci = dev.resolve().name
            uuid = f"GPU-{unique}" if unique else None
            name = _read(dev / "product_name") or f"AMD GPU {_read(dev / 'device') or pci}"
            total = _read_int(dev / "mem_info_vram_total")
            found.append(Device(f"amd-{safe_id(unique or pci)}", "amd", index, uuid, name, total))
        return found

    def _device_dir(self, device: Device) -> Path | None:
        cards = self._cards()
        return cards[device.index] if device.index < len(cards) else None

    def telemetry(self, device: Device) -> Telemetry:
        dev = self._device_dir(device)
        if dev is None:
            return UNKNOWN
        busy = _read_int(dev / "gpu_busy_percent")
        util = _fraction(busy / 100.0) if busy is not None else self._info_load(dev)
        used = _read_int(dev / "mem_info_vram_used")
        total = _read_int(dev / "mem_info_vram_total")
        return Telemetry(util, used, total)

    def _info_load(self, dev: Path) -> float | None:
        info = self._info_loader()
        if info is None:
            return None
        pci = dev.resolve().name
        try:
            for i in range(info.detect_gpus()):
                gpu = info.get_gpu(i)
                if str(getattr(gpu, "pci_slot", "")) == pci:
                    return _fraction(gpu.query_load())  # already a 0..1 fraction
        except Exception:  # a vendor library failing is unknown telemetry, not a crash
            return None
        return None

    def render_minor(self, device: Device) -> int | None:
        """The N of /dev/dri/renderD<N> for ``device``, for device isolation."""
        dev = self._device_dir(device)
        if dev is None:
            return None
        try:
            names = [p.name for p in (dev / "drm").iterdir()]
        except OSError:
            return None
        minors = [int(n[7:]) for n in names if re.fullmatch(r"renderD\d+", n)]
        return minors[0] if minors else None

    def pin_env(self, device: Device) -> dict[str, str]:
        rocr = device.uuid if device.uuid else str(device.index)
        return {"ROCR_VISIBLE_DEVICES": rocr, "HIP_VISIBLE_DEVICES": "0"}

    def pin_process(self, device: Device) -> None:
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


# --------------------------------------------------------------------------- CPU


class CpuBackend:
    """One device, "cpu", covering the cores this process may run on."""

    vendor = "cpu"

    def __init__(
        self,
        affinity_fn: Callable[[], Iterable[int]] = lambda: os.sched_getaffinity(0),
        read_proc: Callable[[str], str | None] = lambda name: _read(Path("/proc") / name),
    ) -> None:
        self._affinity = affinity_fn
        self._read_proc = read_proc

    def discover(self) -> list[Device]:
        cpus = tuple(sorted(self._affinity()))
        total = _meminfo(self._read_proc("meminfo")).get("MemTotal")
        return [Device("cpu", "cpu", 0, None, f"CPU x{len(cpus)}", total, cpus)]

    def telemetry(self, device: Device) -> Telemetry:
        util = None
        load = self._read_proc("loadavg")
        if load and device.cpus:
            try:
                util = _fraction(float(load.split()[0]) / len(device.cpus))
            except (ValueError, IndexError):
                util = None
        mem = _meminfo(self._read_proc("meminfo"))
        total, avail = mem.get("MemTotal"), mem.get("MemAvailable")
        used = total - avail if total is not None and avail is not None else None
        return Telemetry(util, used, total)

    def pin_env(self, device: Device) -> dict[str, str]:
        threads = str(max(len(device.cpus), 1))
        env = dict.fromkeys(_THREAD_VARS, threads)
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU worker must never touch a GPU
        env["HIP_VISIBLE_DEVICES"] = ""
        return env

    def pin_process(self, device: Device) -> None:
        if device.cpus:
            os.sched_setaffinity(0, device.cpus)


def _meminfo(text: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


# --------------------------------------------------------------------------- simulated


class SimBackend:
    """Simulated GPUs for tests and demos; never mistaken for real hardware."""

    vendor = "sim"

    def __init__(
        self,
        count: int,
        memory_total_bytes: int = 16 * 2**30,
        telemetry_fn: Callable[[Device], Telemetry] | None = None,
    ) -> None:
        self._count = count
        self._memory_total_bytes = memory_total_bytes
        self._telemetry_fn = telemetry_fn

    def discover(self) -> list[Device]:
        total = self._memory_total_bytes
        return [
            Device(f"sim-{n}", "sim", n, f"SIM-GPU-{n}", f"Simulated GPU {n}", total)
            for n in range(self._count)
        ]

    def telemetry(self, device: Device) -> Telemetry:
        fn = self._telemetry_fn
        return fn(device) if fn else Telemetry(0.0, 0, device.memory_total_bytes)

    def pin_env(self, device: Device) -> dict[str, str]:
        return {"FLEET_SIM_VISIBLE_DEVICES": device.uuid or str(device.index)}

    def pin_process(self, device: Device) -> None:
        return None


# --------------------------------------------------------------------------- selection


def backends_for(selector: str) -> list[DeviceBackend]:
    """Backends for "auto" | "cpu" | "nvidia" | "amd" | "sim:N"."""
    if selector.startswith("sim:"):
        try:
            count = int(selector[4:])
        except ValueError:
            raise ValueError(f"bad device selector {selector!r}: want sim:<count>") from None
        return [SimBackend(count)]
    fixed: dict[str, DeviceBackend] = {
        "cpu": CpuBackend(), "nvidia": NvidiaBackend(), "amd": AmdBackend(),
    }
    if selector in fixed:
        return [fixed[selector]]
    if selector != "auto":
        raise ValueError(f"bad device selector {selector!r}: want auto|cpu|nvidia|amd|sim:N")
    gpus: list[DeviceBackend] = [b for b in (fixed["nvidia"], fixed["amd"]) if b.discover()]
    return gpus or [fixed["cpu"]]


def discover(selector: str) -> list[Device]:
    return [d for backend in backends_for(selector) for d in backend.discover()]


def backend_for_device(device: Device, sim_count: int | None = None) -> DeviceBackend:
    """A backend that serves ``device`` (its vendor's default backend)."""
    if device.vendor == "sim":
        return SimBackend(sim_count if sim_count is not None else device.index + 1)
    table: dict[str, Callable[[], DeviceBackend]] = {
        "cpu": CpuBackend, "nvidia": NvidiaBackend, "amd": AmdBackend,
    }
    if device.vendor not in table:
        raise ValueError(f"unknown device vendor {device.vendor!r} for {device.id}")
    return table[device.vendor]()


def describe(backends: Iterable[DeviceBackend]) -> list[dict[str, object]]:
    """Rows for the ``fleet devices`` table (and its --json)."""
    rows: list[dict[str, object]] = []
    for backend in backends:
        for d in backend.discover():
            tele = backend.telemetry(d)
            rows.append({
                "id": d.id, "vendor": d.vendor, "index": d.index, "uuid": d.uuid,
                "name": d.name,
                "memory_total_bytes": tele.memory_total_bytes or d.memory_total_bytes,
                "memory_used_bytes": tele.memory_used_bytes, "utilization": tele.utilization,
            })
    return rows
