"""A Prometheus exporter for NVIDIA GPUs, through NVML: what `ark gpu exporter` serves on :9835.

Every scrape reads every GPU once (NVML calls run off the event loop, one scrape at a time) and
answers in base units, as Prometheus names them:

* ``ark_gpu_info{gpu,name,uuid,driver}`` 1, to join names onto the other series;
* ``ark_gpu_memory_bytes{gpu,kind}``: ``total``, ``used``, ``free``;
* ``ark_gpu_utilization_ratio{gpu}``, ``ark_gpu_memory_utilization_ratio{gpu}``: 0..1 of the last
  sample period the GPU (its memory) was busy;
* ``ark_gpu_temperature_celsius{gpu}``, ``ark_gpu_power_watts{gpu}``, ``ark_gpu_power_limit_watts{gpu}``,
  ``ark_gpu_fan_ratio{gpu}``, ``ark_gpu_clock_hertz{gpu,clock}`` (graphics, sm, memory);
* ``ark_gpu_ecc_errors_total{gpu,type}`` (corrected, uncorrected), on boards with ECC;
* ``ark_gpu_process_memory_bytes{gpu,pid,process,kind}``: memory per process, so that Ollama's runners,
  ComfyUI and Blender show separately (``process``: the command name from ``/proc/PID/comm``).

A reading the board does not support (power on some boards, fans on passively cooled ones) is left
out rather than reported as 0. Labels stay bounded: one series per GPU, per clock, per process alive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ark.arbiter.devices import DeviceError, GpuStats, init_nvml, nvml_stats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def process_name(pid: int, proc: Path = Path("/proc")) -> str:
    """The command name of ``pid`` (as ``ps -o comm`` shows it), or "unknown" (another PID namespace)."""
    try:
        return (proc / str(pid) / "comm").read_text().strip() or "unknown"
    except OSError:
        return "unknown"


class GpuExporter(Collector):
    """The GPUs NVML sees, collected at every scrape. ``nvml``: the ``pynvml`` module or a stand-in."""

    def __init__(self, nvml: Any = None) -> None:
        self._nvml = n = init_nvml(nvml)
        try:
            self.driver = _text(n.nvmlSystemGetDriverVersion())
            self._gpus = [
                (i, handle, _text(n.nvmlDeviceGetName(handle)))
                for i in range(n.nvmlDeviceGetCount())
                for handle in [n.nvmlDeviceGetHandleByIndex(i)]
            ]
        except n.NVMLError as exc:
            n.nvmlShutdown()
            raise DeviceError(f"NVML: {exc}") from exc

    def read(self) -> list[GpuStats]:
        return [nvml_stats(self._nvml, handle, index, name) for index, handle, name in self._gpus]

    def close(self) -> None:
        self._nvml.nvmlShutdown()

    def collect(self) -> Iterable[Metric]:
        return families(self.read(), self.driver)


def families(gpus: list[GpuStats], driver: str) -> list[Metric]:
    info = GaugeMetricFamily(
        "ark_gpu_info", "The GPU's name, UUID and driver (always 1).", labels=["gpu", "name", "uuid", "driver"]
    )
    memory = GaugeMetricFamily("ark_gpu_memory_bytes", "GPU memory as NVML reports it.", labels=["gpu", "kind"])
    gauges = {
        key: GaugeMetricFamily(name, text, labels=["gpu"])
        for key, name, text in (
            ("utilization", "ark_gpu_utilization_ratio", "Share of the last sample period the GPU was busy (0..1)."),
            (
                "memory_utilization",
                "ark_gpu_memory_utilization_ratio",
                "Share of it the memory was read or written (0..1).",
            ),
            ("temperature_c", "ark_gpu_temperature_celsius", "GPU temperature."),
            ("power_w", "ark_gpu_power_watts", "GPU power draw."),
            ("power_limit_w", "ark_gpu_power_limit_watts", "GPU power limit."),
            ("fan", "ark_gpu_fan_ratio", "Fan speed as a share of its maximum (0..1)."),
        )
    }
    clocks = GaugeMetricFamily("ark_gpu_clock_hertz", "Current clock speeds.", labels=["gpu", "clock"])
    ecc = CounterMetricFamily(
        "ark_gpu_ecc_errors", "ECC memory errors since the driver loaded.", labels=["gpu", "type"]
    )
    per_process = GaugeMetricFamily(
        "ark_gpu_process_memory_bytes", "GPU memory per process.", labels=["gpu", "pid", "process", "kind"]
    )
    for gpu in gpus:
        label = str(gpu.index)
        info.add_metric([label, gpu.name, gpu.uuid or "", driver], 1.0)
        memory.add_metric([label, "total"], gpu.total)
        memory.add_metric([label, "used"], gpu.used)
        memory.add_metric([label, "free"], max(0, gpu.total - gpu.used))
        for key, family in gauges.items():
            value = getattr(gpu, key)
            if value is not None:
                family.add_metric([label], value)
        for clock, hertz in gpu.clocks_hz.items():
            clocks.add_metric([label, clock], hertz)
        for kind, count in gpu.ecc_errors.items():
            ecc.add_metric([label, kind], count)
        for process in gpu.processes:
            per_process.add_metric([label, str(process.pid), process_name(process.pid), process.kind], process.memory)
    return [info, memory, *gauges.values(), clocks, ecc, per_process]


def app(exporter: GpuExporter) -> web.Application:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(exporter)
    one_at_a_time = asyncio.Lock()

    async def metrics(request: web.Request) -> web.Response:
        async with one_at_a_time:
            body = await asyncio.to_thread(generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def index(request: web.Request) -> web.Response:
        return web.Response(text="ARK GPU exporter: /metrics\n")

    application = web.Application()
    application.router.add_get("/metrics", metrics)
    application.router.add_get("/", index)
    return application


async def serve(exporter: GpuExporter, host: str, port: int, stop: asyncio.Event) -> None:
    """Serve /metrics until ``stop`` is set."""
    runner = web.AppRunner(app(exporter), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        await stop.wait()
    finally:
        await runner.cleanup()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
