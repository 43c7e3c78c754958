"""A stand-in for the ``pynvml`` module (nvidia-ml-py) on machines without an NVIDIA GPU.

It has the names ARK calls with the real module's shapes: ``nvmlDeviceGetMemoryInfo`` returns an
object with ``total``/``free``/``used`` in bytes, ``nvmlDeviceGetPowerUsage`` milliwatts,
``nvmlDeviceGetUtilizationRates`` percentages in ``gpu``/``memory``, ``nvmlDeviceGetComputeRunningProcesses``
objects with ``pid`` and ``usedGpuMemory`` (None where the driver cannot tell); errors are
``NVMLError`` subclasses (``NVMLError_LibraryNotFound`` without a driver, ``NVMLError_NotSupported``
for a reading the board lacks), and nothing works before ``nvmlInit``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NVML_TEMPERATURE_GPU = 0


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    def __str__(self) -> str:
        return "NVML Shared Library Not Found"


class NVMLError_NotSupported(NVMLError):
    def __str__(self) -> str:
        return "Not Supported"


class NVMLError_Uninitialized(NVMLError):
    def __str__(self) -> str:
        return "Uninitialized"


@dataclass
class Memory:
    total: int
    free: int
    used: int


@dataclass
class Utilization:
    gpu: int
    memory: int


@dataclass
class Process:
    pid: int
    usedGpuMemory: int | None


@dataclass
class Gpu:
    name: str = "NVIDIA GeForce RTX 5090"
    total: int = 32 * 1024**3
    used: int = 512 * 1024**2
    temperature: int = 45
    power_mw: int | None = 35_000
    utilization: int = 3
    processes: list[Process] = field(default_factory=list)


class FakeNvml:
    """Pass an instance where ARK takes the ``pynvml`` module."""

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU

    def __init__(self, gpus: list[Gpu] | None = None, *, driver: bool = True) -> None:
        self.gpus = gpus if gpus is not None else [Gpu()]
        self.driver = driver
        self.initialised = 0

    def nvmlInit(self) -> None:
        if not self.driver:
            raise NVMLError_LibraryNotFound()
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self._check()
        self.initialised -= 1

    def _check(self) -> None:
        if self.initialised <= 0:
            raise NVMLError_Uninitialized()

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Gpu:
        self._check()
        return self.gpus[index]

    def nvmlDeviceGetName(self, handle: Gpu) -> str:
        self._check()
        return handle.name

    def nvmlDeviceGetMemoryInfo(self, handle: Gpu) -> Memory:
        self._check()
        return Memory(handle.total, handle.total - handle.used, handle.used)

    def nvmlDeviceGetTemperature(self, handle: Gpu, sensor: int) -> int:
        self._check()
        assert sensor == NVML_TEMPERATURE_GPU
        return handle.temperature

    def nvmlDeviceGetPowerUsage(self, handle: Gpu) -> int:
        self._check()
        if handle.power_mw is None:
            raise NVMLError_NotSupported()
        return handle.power_mw

    def nvmlDeviceGetUtilizationRates(self, handle: Gpu) -> Utilization:
        self._check()
        return Utilization(handle.utilization, 1)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Gpu) -> list[Process]:
        self._check()
        return list(handle.processes)
