"""A stand-in for the ``pynvml`` module (nvidia-ml-py) on machines without an NVIDIA GPU.

It has the names ARK calls with the real module's shapes: ``nvmlDeviceGetMemoryInfo`` returns an
object with ``total``/``free``/``used`` in bytes, ``nvmlDeviceGetPowerUsage`` milliwatts,
``nvmlDeviceGetUtilizationRates`` percentages in ``gpu``/``memory``, ``nvmlDeviceGetComputeRunningProcesses``
objects with ``pid`` and ``usedGpuMemory`` (None where the driver cannot tell), ``nvmlDeviceGetFanSpeed``
percent, ``nvmlDeviceGetClockInfo`` MHz, ``nvmlDeviceGetPowerManagementLimit`` milliwatts,
``nvmlDeviceGetTotalEccErrors`` a count (NotSupported on boards without ECC); errors are
``NVMLError`` subclasses (``NVMLError_LibraryNotFound`` without a driver, ``NVMLError_NotSupported``
for a reading the board lacks), and nothing works before ``nvmlInit``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_GRAPHICS, NVML_CLOCK_SM, NVML_CLOCK_MEM = 0, 1, 2
NVML_MEMORY_ERROR_TYPE_CORRECTED, NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 0, 1
NVML_VOLATILE_ECC, NVML_AGGREGATE_ECC = 0, 1


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
    memory_utilization: int = 1
    processes: list[Process] = field(default_factory=list)
    graphics_processes: list[Process] = field(default_factory=list)
    uuid: str = "GPU-8c3f7d0e-2b1a-4c5d-9e6f-0a1b2c3d4e5f"
    fan_percent: int | None = 30
    clocks_mhz: tuple[int, int, int] = (2407, 2407, 14001)  # graphics, SM, memory
    power_limit_mw: int | None = 575_000
    ecc: tuple[int, int] | None = None  # (corrected, uncorrected); None: no ECC (consumer boards)


class FakeNvml:
    """Pass an instance where ARK takes the ``pynvml`` module."""

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU
    NVML_CLOCK_GRAPHICS, NVML_CLOCK_SM, NVML_CLOCK_MEM = NVML_CLOCK_GRAPHICS, NVML_CLOCK_SM, NVML_CLOCK_MEM
    NVML_MEMORY_ERROR_TYPE_CORRECTED = NVML_MEMORY_ERROR_TYPE_CORRECTED
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = NVML_MEMORY_ERROR_TYPE_UNCORRECTED
    NVML_VOLATILE_ECC, NVML_AGGREGATE_ECC = NVML_VOLATILE_ECC, NVML_AGGREGATE_ECC
    driver_version = "570.133.07"

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
        return Utilization(handle.utilization, handle.memory_utilization)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Gpu) -> list[Process]:
        self._check()
        return list(handle.processes)

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: Gpu) -> list[Process]:
        self._check()
        return list(handle.graphics_processes)

    def nvmlDeviceGetUUID(self, handle: Gpu) -> str:
        self._check()
        return handle.uuid

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check()
        return self.driver_version

    def nvmlDeviceGetFanSpeed(self, handle: Gpu) -> int:
        self._check()
        if handle.fan_percent is None:
            raise NVMLError_NotSupported()
        return handle.fan_percent

    def nvmlDeviceGetClockInfo(self, handle: Gpu, clock: int) -> int:
        self._check()
        return handle.clocks_mhz[clock]

    def nvmlDeviceGetPowerManagementLimit(self, handle: Gpu) -> int:
        self._check()
        if handle.power_limit_mw is None:
            raise NVMLError_NotSupported()
        return handle.power_limit_mw

    def nvmlDeviceGetTotalEccErrors(self, handle: Gpu, error_type: int, counter_type: int) -> int:
        self._check()
        if handle.ecc is None:
            raise NVMLError_NotSupported()
        assert counter_type in (NVML_VOLATILE_ECC, NVML_AGGREGATE_ECC)
        return handle.ecc[error_type]
