"""Freeing ComfyUI: /free only sets a flag, so the driver waits until the memory really comes back."""

from __future__ import annotations

import asyncio

import pytest

from ark.arbiter.drivers import ComfyDriver, DriverError
from tests.conftest import free_port
from tests.fakes.comfyui import GIB, FakeComfyUI


def test_free_waits_for_the_memory_to_come_back() -> None:
    async def main() -> None:
        comfy = FakeComfyUI(idle=GIB * 3 // 4, models=6 * GIB)
        comfy.others = 12 * GIB  # Ollama's models on the same GPU are not ComfyUI's
        await comfy.start()
        driver = ComfyDriver(comfy.url, idle=GIB * 3 // 4, poll=0.02, deadline=5)
        try:
            assert await driver.used() == 6 * GIB + GIB * 3 // 4 and not await driver.busy()
            await driver.free_comfy()
            assert await driver.used() == GIB * 3 // 4  # returned only once the worker had unloaded
            assert comfy.frees == [{"unload_models": True, "free_memory": True}]
        finally:
            await driver.close()
            await comfy.stop()

    asyncio.run(main())


def test_a_busy_comfyui_frees_after_its_job_or_the_driver_gives_up() -> None:
    async def main() -> None:
        comfy = FakeComfyUI()
        comfy.busy = True
        await comfy.start()
        driver = ComfyDriver(comfy.url, idle=comfy.idle, poll=0.02, deadline=0.5)
        try:
            assert await driver.busy()
            with pytest.raises(DriverError, match="still holds its models"):
                await driver.free_comfy()
            patient = ComfyDriver(comfy.url, idle=comfy.idle, poll=0.02, deadline=5)
            freeing = asyncio.ensure_future(patient.free_comfy())
            await asyncio.sleep(0.2)
            assert not freeing.done()  # the job is still running
            comfy.finish_job()
            await asyncio.wait_for(freeing, 5)
            assert comfy.models == 0
            await patient.close()
        finally:
            await driver.close()
            await comfy.stop()

    asyncio.run(main())


def test_an_absent_comfyui_is_a_driver_error() -> None:
    async def main() -> None:
        driver = ComfyDriver(f"http://127.0.0.1:{free_port()}", idle=0, deadline=1)  # nothing listens there
        try:
            with pytest.raises(DriverError, match="ComfyUI"):
                await driver.used()
        finally:
            await driver.close()

    asyncio.run(main())
