"""Device probes: NVML (against a stand-in for pynvml), the virtual GPU, system memory, and the choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from ark.arbiter.devices import DeviceError, NvmlDevice, RamDevice, VirtualDevice, open_device
from ark.arbiter.policy import GB
from ark.config import load_settings
from ark.config.loader import GpuSettings
from tests.fakes.nvml import FakeNvml, Gpu, Process


def gpu_settings(tmp_path: Path, **env: str) -> GpuSettings:
    return load_settings(env={"ARK_DATA_DIR": str(tmp_path), **{f"ARK_GPU_{k.upper()}": v for k, v in env.items()}}).gpu


def test_nvml_reading_in_base_units() -> None:
    fake = FakeNvml(
        [
            Gpu(name="other", total=8 * GB),
            Gpu(
                total=32 * GB,
                used=24 * GB,
                temperature=71,
                power_mw=287_500,
                utilization=93,
                processes=[Process(4242, 23 * GB), Process(5151, None)],  # no number for the second
            ),
        ]
    )
    device = NvmlDevice(1, fake)
    reading = device.read()
    assert (reading.kind, reading.index, reading.name) == ("nvml", 1, "NVIDIA GeForce RTX 5090")
    assert (reading.total, reading.used, reading.free) == (32 * GB, 24 * GB, 8 * GB)
    assert (reading.temperature_c, reading.power_w, reading.utilization) == (71.0, 287.5, 0.93)
    assert reading.processes == ((4242, 23 * GB),)
    device.close()
    assert fake.initialised == 0


def test_nvml_readings_a_board_lacks_are_none() -> None:
    reading = NvmlDevice(0, FakeNvml([Gpu(power_mw=None)])).read()
    assert reading.power_w is None and reading.temperature_c == 45.0


def test_nvml_errors_are_device_errors_and_leave_nvml_shut() -> None:
    with pytest.raises(DeviceError, match="Shared Library Not Found"):
        NvmlDevice(0, FakeNvml(driver=False))
    fake = FakeNvml()
    with pytest.raises(DeviceError, match="index = 3, but NVML sees 1 GPU"):
        NvmlDevice(3, fake)
    assert fake.initialised == 0


def test_ram_device_reads_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24576000 kB\nMemFree:         1000000 kB\nMemAvailable:   20480000 kB\n")
    reading = RamDevice(meminfo).read()
    assert (reading.total, reading.used) == (24576000 * 1024, 4096000 * 1024)
    real = RamDevice().read()  # this machine's
    assert 0 < real.used < real.total
    meminfo.write_text("MemTotal: 1 kB\n")
    with pytest.raises(DeviceError, match="MemAvailable"):
        RamDevice(meminfo)


def test_the_device_is_chosen_as_configured(tmp_path: Path) -> None:
    no_gpu = FakeNvml(driver=False)
    virtual = open_device(gpu_settings(tmp_path, memory_gb="32"), nvml=no_gpu)
    assert isinstance(virtual, VirtualDevice) and virtual.read().total == 32 * GB and virtual.read().used == 0
    assert isinstance(open_device(gpu_settings(tmp_path), nvml=no_gpu), RamDevice)
    assert isinstance(open_device(gpu_settings(tmp_path, memory_gb="32"), nvml=FakeNvml()), NvmlDevice)
    with pytest.raises(DeviceError, match="nothing to manage"):
        open_device(gpu_settings(tmp_path), cpu_engine=False, nvml=no_gpu)
    with pytest.raises(DeviceError, match="memory_gb"):
        open_device(gpu_settings(tmp_path, device="virtual"), nvml=no_gpu)
    with pytest.raises(DeviceError, match="no NVIDIA driver"):
        open_device(gpu_settings(tmp_path, device="nvml"), nvml=no_gpu)


def test_bad_gpu_settings_are_config_errors(tmp_path: Path) -> None:
    from ark.errors import ConfigError

    with pytest.raises(ConfigError, match="ARK_GPU_LARGE_FRACTION"):
        gpu_settings(tmp_path, large_fraction="1.5")
    with pytest.raises(ConfigError, match="ARK_GPU_DEVICE"):
        gpu_settings(tmp_path, device="cuda")


def test_the_real_nvml_module_on_this_machine() -> None:
    """nvidia-ml-py itself: without an NVIDIA driver its error becomes a DeviceError; with one, a reading."""
    if not Path("/dev/nvidia0").exists():
        with pytest.raises(DeviceError, match="NVML"):
            NvmlDevice(0)
        return
    device = NvmlDevice(0)
    reading = device.read()
    device.close()
    assert reading.total > 0 and 0 <= reading.used <= reading.total
