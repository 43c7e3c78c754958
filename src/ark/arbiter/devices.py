"""What the arbiter manages, behind one interface: an NVIDIA GPU, a virtual GPU, or system memory.

``read()`` is blocking (NVML calls, /proc reads): the scheduler runs it off the event loop.

* :class:`NvmlDevice`: an NVIDIA GPU through NVML (the ``nvidia-ml-py`` package, imported as
  ``pynvml``): memory, temperature, power, utilisation and the memory of each process on it.
* :class:`VirtualDevice`: a GPU of a configured size that exists only in the plan (``[gpu] memory_gb``):
  for machines without one, for tests and dry runs. Nothing outside the arbiter uses it.
* :class:`RamDevice`: system memory, for llama.cpp on the CPU, so the same rules keep a laptop from
  swapping: "used" is what the kernel cannot give back (MemTotal - MemAvailable).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ark.arbiter.policy import GB
from ark.config.loader import GpuSettings
from ark.errors import ArkError


@dataclass(frozen=True, slots=True)
class Reading:
    kind: str  # "nvml", "virtual", "ram"
    index: int
    name: str
    total: int  # bytes
    used: int  # bytes in use by anyone (0 on a virtual device: only the arbiter's accounts exist)
    temperature_c: float | None = None
    power_w: float | None = None
    utilization: float | None = None  # 0..1
    processes: tuple[tuple[int, int], ...] = field(default=())  # (pid, bytes) where the device reports them

    @property
    def free(self) -> int:
        return max(0, self.total - self.used)


class Device(Protocol):
    kind: str

    def read(self) -> Reading: ...

    def close(self) -> None: ...


class DeviceError(ArkError):
    """The device cannot be used (no driver, no such GPU, nothing configured)."""


class VirtualDevice:
    kind = "virtual"

    def __init__(self, memory: int) -> None:
        if memory <= 0:
            raise DeviceError("a virtual device needs a size: set [gpu] memory_gb")
        self.memory = memory

    def read(self) -> Reading:
        return Reading("virtual", 0, f"virtual GPU ({self.memory / GB:g} GB)", self.memory, 0)

    def close(self) -> None:
        pass


class RamDevice:
    kind = "ram"

    def __init__(self, meminfo: Path = Path("/proc/meminfo")) -> None:
        self._meminfo = meminfo
        self.read()  # fail now, not at the first request

    def read(self) -> Reading:
        fields: dict[str, int] = {}
        try:
            text = self._meminfo.read_text()
        except OSError as exc:
            raise DeviceError(f"cannot read {self._meminfo}: {exc}") from exc
        for line in text.splitlines():
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                fields[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
        if "MemTotal" not in fields or "MemAvailable" not in fields:
            raise DeviceError(f"{self._meminfo} has no MemTotal/MemAvailable")
        total = fields["MemTotal"]
        return Reading("ram", 0, "system memory", total, total - fields["MemAvailable"])

    def close(self) -> None:
        pass


def init_nvml(nvml: Any = None) -> Any:
    """NVML, initialised: ``nvml`` (a stand-in) or the ``pynvml`` module; DeviceError when there is none.
    The caller shuts it down (``nvmlShutdown``) when done."""
    try:
        module = nvml or importlib.import_module("pynvml")
    except ImportError as exc:
        raise DeviceError("nvidia-ml-py is not installed (pip install nvidia-ml-py)") from exc
    try:
        module.nvmlInit()
    except module.NVMLError as exc:
        raise DeviceError(f"NVML: {exc} (no NVIDIA driver?)") from exc
    return module


class NvmlDevice:
    kind = "nvml"

    def __init__(self, index: int = 0, nvml: Any = None) -> None:
        self._nvml = n = init_nvml(nvml)
        try:
            count = n.nvmlDeviceGetCount()
            if index >= count:
                raise DeviceError(f"[gpu] index = {index}, but NVML sees {count} GPU(s)")
            self._handle = n.nvmlDeviceGetHandleByIndex(index)
            name = n.nvmlDeviceGetName(self._handle)
        except n.NVMLError as exc:
            n.nvmlShutdown()
            raise DeviceError(f"NVML: {exc}") from exc
        except DeviceError:
            n.nvmlShutdown()
            raise
        self.index = index
        self.name = name.decode() if isinstance(name, bytes) else str(name)

    def read(self) -> Reading:
        stats = nvml_stats(self._nvml, self._handle, self.index, self.name, full=False)  # every second
        return Reading(
            "nvml",
            self.index,
            self.name,
            stats.total,
            stats.used,
            temperature_c=stats.temperature_c,
            power_w=stats.power_w,
            utilization=stats.utilization,
            processes=tuple((p.pid, p.memory) for p in stats.processes),
        )

    def close(self) -> None:
        self._nvml.nvmlShutdown()


@dataclass(frozen=True, slots=True)
class GpuProcess:
    pid: int
    memory: int  # bytes
    kind: str  # "compute" (CUDA: Ollama, llama.cpp, ComfyUI) or "graphics" (a display, Blender's EEVEE)


@dataclass(frozen=True, slots=True)
class GpuStats:
    """All NVML says of one GPU, in base units; None where the board does not support a reading."""

    index: int
    name: str
    uuid: str | None
    total: int
    used: int
    temperature_c: float | None
    power_w: float | None
    power_limit_w: float | None
    utilization: float | None  # 0..1 of the last sample period the GPU was busy
    memory_utilization: float | None  # 0..1 of it the memory was being read or written
    fan: float | None  # 0..1 of the fan's maximum
    clocks_hz: dict[str, float]  # graphics, sm, memory
    ecc_errors: dict[str, int]  # corrected, uncorrected (since the driver loaded); empty without ECC
    processes: tuple[GpuProcess, ...]


def nvml_stats(nvml: Any, handle: Any, index: int, name: str, *, full: bool = True) -> GpuStats:
    """Read one GPU through NVML (the ``pynvml`` module or a stand-in with its names and units:
    milliwatts, percentages, MHz). ``full=False``: only what the arbiter reads every second (memory,
    temperature, power, utilisation, compute processes), not the exporter's clocks, fans, ECC..."""

    def optional(call: Any) -> Any:
        try:
            return call()
        except nvml.NVMLError:
            return None

    def extra(call: Any) -> Any:  # what only the exporter needs
        return optional(call) if full else None

    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    rates = optional(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
    power = optional(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
    temperature = optional(lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
    limit = extra(lambda: nvml.nvmlDeviceGetPowerManagementLimit(handle))
    fan = extra(lambda: nvml.nvmlDeviceGetFanSpeed(handle))
    uuid = extra(lambda: nvml.nvmlDeviceGetUUID(handle))
    clocks = {
        label: extra(lambda clock=clock: nvml.nvmlDeviceGetClockInfo(handle, clock))
        for label, clock in (
            ("graphics", nvml.NVML_CLOCK_GRAPHICS),
            ("sm", nvml.NVML_CLOCK_SM),
            ("memory", nvml.NVML_CLOCK_MEM),
        )
    }
    ecc = {
        label: extra(lambda kind=kind: nvml.nvmlDeviceGetTotalEccErrors(handle, kind, nvml.NVML_VOLATILE_ECC))
        for label, kind in (
            ("corrected", nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED),
            ("uncorrected", nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
        )
    }
    processes: list[GpuProcess] = []
    for kind, call, wanted in (
        ("compute", nvml.nvmlDeviceGetComputeRunningProcesses, True),
        ("graphics", nvml.nvmlDeviceGetGraphicsRunningProcesses, full),
    ):
        # usedGpuMemory is None where the driver cannot tell (Windows WDDM, some containers)
        found = (optional(lambda call=call: call(handle)) if wanted else None) or []
        processes += [GpuProcess(int(p.pid), int(p.usedGpuMemory), kind) for p in found if p.usedGpuMemory is not None]
    return GpuStats(
        index=index,
        name=name,
        uuid=uuid.decode() if isinstance(uuid, bytes) else uuid,
        total=int(memory.total),
        used=int(memory.used),
        temperature_c=float(temperature) if temperature is not None else None,
        power_w=power / 1000.0 if power is not None else None,
        power_limit_w=limit / 1000.0 if limit is not None else None,
        utilization=rates.gpu / 100.0 if rates is not None else None,
        memory_utilization=rates.memory / 100.0 if rates is not None else None,
        fan=fan / 100.0 if fan is not None else None,
        clocks_hz={k: v * 1e6 for k, v in clocks.items() if v is not None},
        ecc_errors={k: int(v) for k, v in ecc.items() if v is not None},
        processes=tuple(processes),
    )


def open_device(settings: GpuSettings, *, cpu_engine: bool = True, nvml: Any = None) -> Device:
    """The device ``[gpu] device`` names; for "auto": NVML, else virtual (memory_gb set), else system RAM."""
    memory = int(settings.memory_gb * GB)
    if settings.device == "nvml":
        return NvmlDevice(settings.index, nvml)
    if settings.device == "virtual":
        return VirtualDevice(memory)
    if settings.device == "ram":
        return RamDevice()
    try:
        return NvmlDevice(settings.index, nvml)
    except DeviceError:
        pass
    if memory > 0:
        return VirtualDevice(memory)
    if cpu_engine:
        return RamDevice()
    raise DeviceError("no NVIDIA GPU, no [gpu] memory_gb, and no engine that runs on the CPU: nothing to manage")
