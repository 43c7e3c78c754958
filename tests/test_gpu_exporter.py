"""The GPU exporter against a stand-in for NVML (same names and units as nvidia-ml-py), scraped over HTTP."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import httpx
import pytest

from ark.arbiter.devices import DeviceError
from ark.monitor.gpu_exporter import GpuExporter, process_name, serve
from tests.conftest import free_port
from tests.fakes.nvml import FakeNvml, Gpu, Process

GIB = 1024**3


def scrape(exporter: GpuExporter) -> dict[str, float]:
    """Every sample of one scrape, by its line's name and labels."""
    port = free_port()

    async def main() -> str:
        stop = asyncio.Event()
        server = asyncio.ensure_future(serve(exporter, "127.0.0.1", port, stop))
        try:
            for _ in range(100):
                try:
                    async with httpx.AsyncClient() as client:
                        response = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
                    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
                    return response.text
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
            raise AssertionError("the exporter did not start")
        finally:
            stop.set()
            await server

    text = asyncio.run(main())
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_every_gpu_in_base_units_with_memory_per_process() -> None:
    me = os.getpid()
    nvml = FakeNvml(
        [
            Gpu(
                used=20 * GIB,
                temperature=71,
                power_mw=412_500,
                utilization=87,
                memory_utilization=40,
                processes=[Process(me, 18 * GIB), Process(4_000_000, None)],  # None: the driver cannot tell
                graphics_processes=[Process(me + 1_000_000, GIB)],
                ecc=(3, 0),
            ),
            Gpu(name="NVIDIA RTX A2000", uuid="GPU-2", fan_percent=None, power_mw=None, power_limit_mw=None),
        ]
    )
    exporter = GpuExporter(nvml)
    samples = scrape(exporter)
    exporter.close()
    assert nvml.initialised == 0  # NVML shut again
    uuid = nvml.gpus[0].uuid
    info = f'ark_gpu_info{{driver="570.133.07",gpu="0",name="NVIDIA GeForce RTX 5090",uuid="{uuid}"}}'
    assert samples[info] == 1
    assert samples['ark_gpu_memory_bytes{gpu="0",kind="total"}'] == 32 * GIB
    assert samples['ark_gpu_memory_bytes{gpu="0",kind="used"}'] == 20 * GIB
    assert samples['ark_gpu_memory_bytes{gpu="0",kind="free"}'] == 12 * GIB
    assert samples['ark_gpu_utilization_ratio{gpu="0"}'] == 0.87
    assert samples['ark_gpu_memory_utilization_ratio{gpu="0"}'] == 0.40
    assert samples['ark_gpu_temperature_celsius{gpu="0"}'] == 71
    assert samples['ark_gpu_power_watts{gpu="0"}'] == 412.5  # NVML says milliwatts
    assert samples['ark_gpu_power_limit_watts{gpu="0"}'] == 575.0
    assert samples['ark_gpu_fan_ratio{gpu="0"}'] == 0.30  # NVML says percent
    assert samples['ark_gpu_clock_hertz{clock="memory",gpu="0"}'] == 14001e6  # NVML says MHz
    assert samples['ark_gpu_ecc_errors_total{gpu="0",type="corrected"}'] == 3
    name = process_name(me)
    assert samples[f'ark_gpu_process_memory_bytes{{gpu="0",kind="compute",pid="{me}",process="{name}"}}'] == 18 * GIB
    assert (
        samples[f'ark_gpu_process_memory_bytes{{gpu="0",kind="graphics",pid="{me + 1_000_000}",process="unknown"}}']
        == GIB
    )
    assert not any('pid="4000000"' in key for key in samples)  # no made-up 0 for what the driver cannot tell
    # the second board lacks a fan, power readings and ECC: those series are absent, not 0
    assert samples['ark_gpu_memory_bytes{gpu="1",kind="total"}'] == 32 * GIB
    for missing in (
        "ark_gpu_fan_ratio",
        "ark_gpu_power_watts",
        "ark_gpu_power_limit_watts",
        "ark_gpu_ecc_errors_total",
    ):
        assert f'{missing}{{gpu="1"' not in "".join(samples)


def test_no_driver_is_a_clear_error() -> None:
    with pytest.raises(DeviceError, match="no NVIDIA driver"):
        GpuExporter(FakeNvml(driver=False))
    try:
        refused = subprocess.run(
            [sys.executable, "-m", "ark", "gpu", "exporter", "--listen", f"127.0.0.1:{free_port()}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:  # pragma: no cover - only where an NVIDIA driver answers
        pytest.skip("this machine has an NVIDIA driver: the exporter started and serves (it never exits)")
    assert refused.returncode == 1 and "NVML" in refused.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "ark", "gpu", "exporter", "--listen", "nowhere"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr
