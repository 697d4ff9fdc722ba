"""Device backends driven through their injectable probes (no GPU on the test host)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from scheduler.devices import (
    AmdBackend,
    CpuBackend,
    Device,
    NvidiaBackend,
    SimBackend,
    Telemetry,
    backend_for_device,
    backends_for,
    describe,
    discover,
    safe_id,
)


class NVMLError(Exception):
    pass


class NVMLErrorNotSupported(NVMLError):
    pass


def fake_nvml(gpus: list[dict[str, Any]], init_error: bool = False) -> Any:
    """A stand-in for the pynvml module with the calls the backend makes."""

    def init() -> None:
        if init_error:
            raise NVMLError("Driver Not Loaded")

    def by_uuid(uuid: str) -> dict[str, Any]:
        return next(g for g in gpus if g["uuid"] == uuid)

    def util(h: dict[str, Any]) -> Any:
        if h.get("util") is None:
            raise NVMLErrorNotSupported("Not Supported")
        return SimpleNamespace(gpu=h["util"], memory=0)

    def mem(h: dict[str, Any]) -> Any:
        return SimpleNamespace(total=h["total"], used=h["used"], free=h["total"] - h["used"])

    return SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=init,
        nvmlDeviceGetCount=lambda: len(gpus),
        nvmlDeviceGetHandleByIndex=lambda i: gpus[i],
        nvmlDeviceGetHandleByUUID=by_uuid,
        nvmlDeviceGetUUID=lambda h: h["uuid"].encode(),
        nvmlDeviceGetName=lambda h: h["name"],
        nvmlDeviceGetMemoryInfo=mem,
        nvmlDeviceGetUtilizationRates=util,
        nvmlDeviceGetMinorNumber=lambda h: h["minor"],
    )


GPUS = [
    {"uuid": "GPU-aaaa-1111", "name": "NVIDIA H100", "total": 80 * 2**30, "used": 2**30,
     "util": 37, "minor": 0},
    {"uuid": "GPU-bbbb-2222", "name": "NVIDIA H100", "total": 80 * 2**30, "used": 0,
     "util": None, "minor": 3},
]


def test_nvidia_discovers_devices_with_uuid_ids() -> None:
    backend = NvidiaBackend(nvml_loader=lambda: fake_nvml(GPUS))
    devices = backend.discover()
    assert [d.id for d in devices] == ["nvidia-GPU-aaaa-1111", "nvidia-GPU-bbbb-2222"]
    assert [d.index for d in devices] == [0, 1]
    assert devices[0].uuid == "GPU-aaaa-1111"
    assert devices[0].memory_total_bytes == 80 * 2**30
    assert backend.minor_number(devices[1]) == 3


def test_nvidia_telemetry_not_supported_gives_none_not_crash() -> None:
    backend = NvidiaBackend(nvml_loader=lambda: fake_nvml(GPUS))
    first, second = backend.discover()
    assert backend.telemetry(first) == Telemetry(0.37, 2**30, 80 * 2**30)
    assert backend.telemetry(second) == Telemetry(None, 0, 80 * 2**30)


def test_nvidia_pins_by_uuid_in_pci_order() -> None:
    backend = NvidiaBackend(nvml_loader=lambda: fake_nvml(GPUS))
    env = backend.pin_env(backend.discover()[1])
    assert env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "GPU-bbbb-2222"}


def missing_library() -> Any:
    raise ImportError("No module named 'pynvml'")


@pytest.mark.parametrize(
    "loader",
    [missing_library, lambda: fake_nvml(GPUS, init_error=True)],
    ids=["library missing", "driver missing"],
)
def test_nvidia_missing_library_or_driver_means_zero_devices(loader: Any) -> None:
    backend = NvidiaBackend(nvml_loader=loader)
    assert backend.discover() == []
    fake = Device("nvidia-x", "nvidia", 0, "x", "x", None)
    assert backend.telemetry(fake) == Telemetry(None, None, None)
    assert backend.minor_number(fake) is None


def make_amd_card(root: Path, n: int, vendor: str = "0x1002", **files: str) -> Path:
    pci = root / "pci" / f"0000:0{n}:00.0"
    (pci / "drm" / f"renderD{128 + n}").mkdir(parents=True)
    (pci / "vendor").write_text(vendor + "\n")
    for name, value in files.items():
        (pci / name).write_text(value + "\n")
    card = root / f"card{n}"
    card.mkdir()
    (card / "device").symlink_to(pci)
    return pci


def test_amd_reads_sysfs(tmp_path: Path) -> None:
    make_amd_card(tmp_path, 0, unique_id="abc123", gpu_busy_percent="42",
                  mem_info_vram_used="1024", mem_info_vram_total="4096",
                  product_name="Instinct MI300X")
    make_amd_card(tmp_path, 1, vendor="0x10de")  # an NVIDIA card in the same box: not ours
    make_amd_card(tmp_path, 2, mem_info_vram_total="8192")
    (tmp_path / "card0-DP-1").mkdir()  # a connector, not a card
    backend = AmdBackend(sysfs_root=tmp_path, info_loader=lambda: None)
    first, second = backend.discover()
    assert first == Device("amd-abc123", "amd", 0, "GPU-abc123", "Instinct MI300X", 4096)
    assert second.id == "amd-0000-02-00.0" and second.uuid is None and second.index == 1
    assert backend.telemetry(first) == Telemetry(0.42, 1024, 4096)
    assert backend.telemetry(second) == Telemetry(None, None, 8192)
    assert backend.render_minor(first) == 128
    assert backend.pin_env(first) == {"ROCR_VISIBLE_DEVICES": "GPU-abc123",
                                      "HIP_VISIBLE_DEVICES": "0"}
    assert backend.pin_env(second)["ROCR_VISIBLE_DEVICES"] == "1"


def test_amd_falls_back_to_pyamdgpuinfo_load(tmp_path: Path) -> None:
    make_amd_card(tmp_path, 0, mem_info_vram_total="4096")
    gpu = SimpleNamespace(pci_slot="0000:00:00.0", query_load=lambda: 0.25)
    info = SimpleNamespace(detect_gpus=lambda: 1, get_gpu=lambda i: gpu)
    backend = AmdBackend(sysfs_root=tmp_path, info_loader=lambda: info)
    (device,) = backend.discover()
    assert backend.telemetry(device).utilization == 0.25


def test_amd_without_sysfs_has_no_devices(tmp_path: Path) -> None:
    assert AmdBackend(sysfs_root=tmp_path / "absent").discover() == []


def test_cpu_device_covers_affinity_and_hides_gpus() -> None:
    proc = {"loadavg": "1.00 0.5 0.2 1/100 42",
            "meminfo": "MemTotal: 1000 kB\nMemAvailable: 250 kB\n"}
    backend = CpuBackend(affinity_fn=lambda: {3, 1}, read_proc=proc.get)
    (device,) = backend.discover()
    assert device == Device("cpu", "cpu", 0, None, "CPU x2", 1024000, (1, 3))
    assert backend.telemetry(device) == Telemetry(0.5, 750 * 1024, 1000 * 1024)
    env = backend.pin_env(device)
    assert env["OMP_NUM_THREADS"] == "2" and env["CUDA_VISIBLE_DEVICES"] == ""


def test_cpu_telemetry_is_none_safe() -> None:
    backend = CpuBackend(affinity_fn=lambda: {0}, read_proc=lambda name: None)
    (device,) = backend.discover()
    assert backend.telemetry(device) == Telemetry(None, None, None)


def test_cpu_pin_process_sets_real_affinity() -> None:
    before = os.sched_getaffinity(0)
    core = min(before)
    try:
        CpuBackend().pin_process(Device("cpu", "cpu", 0, None, "cpu", None, (core,)))
        assert os.sched_getaffinity(0) == {core}
    finally:
        os.sched_setaffinity(0, before)


def test_sim_devices_are_named_and_drivable() -> None:
    backend = SimBackend(3, memory_total_bytes=1000,
                         telemetry_fn=lambda d: Telemetry(0.1 * d.index, 10 * d.index, 1000))
    devices = backend.discover()
    assert [d.id for d in devices] == ["sim-0", "sim-1", "sim-2"]
    assert devices[2].uuid == "SIM-GPU-2"
    assert backend.telemetry(devices[2]) == Telemetry(0.2, 20, 1000)
    assert backend.pin_env(devices[1]) == {"FLEET_SIM_VISIBLE_DEVICES": "SIM-GPU-1"}


def test_selectors() -> None:
    assert [d.id for d in discover("sim:2")] == ["sim-0", "sim-1"]
    assert [d.id for d in discover("cpu")] == ["cpu"]
    assert [b.vendor for b in backends_for("nvidia")] == ["nvidia"]
    # this test host has no GPU: auto falls back to the CPU
    assert [b.vendor for b in backends_for("auto")] == ["cpu"]
    with pytest.raises(ValueError, match="bad device selector"):
        backends_for("tpu")
    with pytest.raises(ValueError, match="sim:<count>"):
        backends_for("sim:x")


def test_backend_for_device_and_describe() -> None:
    sim = SimBackend(2)
    assert backend_for_device(sim.discover()[1]).vendor == "sim"
    assert backend_for_device(Device("cpu", "cpu", 0, None, "c", None)).vendor == "cpu"
    rows = describe([sim])
    assert rows[0] == {"id": "sim-0", "vendor": "sim", "index": 0, "uuid": "SIM-GPU-0",
                       "name": "Simulated GPU 0", "memory_total_bytes": 16 * 2**30,
                       "memory_used_bytes": 0, "utilization": 0.0}


def test_safe_id() -> None:
    assert safe_id("0000:03:00.0") == "0000-03-00.0"
    assert safe_id("GPU-ab/c d") == "GPU-ab-c-d"
