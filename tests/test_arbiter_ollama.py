"""The arbiter against the Ollama stand-in with VRAM modelled: swaps confirmed through /api/ps."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import httpx
import pytest

from ark.arbiter.catalog import Entry
from ark.arbiter.drivers import DriverError, OllamaDriver
from ark.arbiter.policy import ModelInfo, Priority
from ark.arbiter.scheduler import Arbiter
from ark.config import load_settings
from ark.engines.ollama import OllamaEngine
from tests.fakes.ollama import FakeOllama

GIB = 1024**3
EMBED = "nomic-embed-text:latest"


def entry(name: str, memory: int, *, large: bool = False, pinned: bool = False) -> Entry:
    return Entry(ModelInfo(name, memory, Priority.MEDIUM, pinned, large), "ollama", 300.0, "config")


def sizes(fake: FakeOllama, *names: str) -> dict[str, int]:
    for name in names:
        fake.load(name)
    found = {name: entry.size for name, entry in fake.loaded.items()}
    for name in names:
        fake.load(name, keep_alive=0)
    return found


def test_a_swap_on_ollama_is_carried_out_and_confirmed(fake_ollama: FakeOllama) -> None:
    fake_ollama.add_model("thinker:20b")
    fake_ollama.add_model("coder:12b")
    size = sizes(fake_ollama, "thinker:20b", "coder:12b", EMBED)
    assert size["thinker:20b"] + size["coder:12b"] > 16 * GIB > size["thinker:20b"] + size[EMBED]
    fake_ollama.vram = 16 * GIB
    fake_ollama.unload_delay = 0.3  # Ollama answers an unload before the runner is gone
    catalog = {
        "thinker:20b": entry("thinker:20b", size["thinker:20b"], large=True),
        "coder:12b": entry("coder:12b", size["coder:12b"]),
        EMBED: entry(EMBED, size[EMBED], pinned=True),
    }

    async def main() -> None:
        driver = OllamaDriver(fake_ollama.url, poll=0.05, deadline=10)
        arbiter = Arbiter(catalog, driver, capacity=16 * GIB, max_wait=30, queue_size=8)
        arbiter.start()
        try:
            (await arbiter.acquire(EMBED)).release()  # an embedding model: loaded through /api/embed
            coder = await arbiter.acquire("coder:12b")
            assert set(fake_ollama.loaded) == {EMBED, "coder:12b"}
            thinker = asyncio.ensure_future(arbiter.acquire("thinker:20b"))
            await asyncio.sleep(0.2)
            assert not thinker.done()  # the coder is serving a request: it stays
            coder.release()
            lease = await asyncio.wait_for(thinker, 10)
            # the coder is really gone (polled through the unload delay), the thinker all on the GPU
            assert set(fake_ollama.loaded) == {EMBED, "thinker:20b"}
            assert arbiter.resident["thinker:20b"].memory == size["thinker:20b"] and not driver.splits
            lease.release()
        finally:
            await arbiter.close()
            await driver.close()

    asyncio.run(main())


def test_a_model_ollama_puts_partly_on_the_cpu_is_noticed_and_a_refusal_is_an_error(
    fake_ollama: FakeOllama,
) -> None:
    fake_ollama.add_model("thinker:20b")
    size = sizes(fake_ollama, "thinker:20b")["thinker:20b"]
    fake_ollama.vram = 8 * GIB

    async def main() -> None:
        driver = OllamaDriver(fake_ollama.url, poll=0.05, deadline=10)
        try:
            assert await driver.load("thinker:20b") == 8 * GIB  # what it takes on the GPU
            assert driver.splits == {"thinker:20b": (size, 8 * GIB)}
            await driver.unload("thinker:20b")
            assert fake_ollama.loaded == {} and driver.splits == {}
            fake_ollama.system_memory = 1 * GIB
            with pytest.raises(DriverError, match="requires more system memory"):
                await driver.load("thinker:20b")
            with pytest.raises(DriverError, match="not found"):
                await driver.load("missing:1b")
        finally:
            await driver.close()

    asyncio.run(main())


def test_facts_from_ollama_feed_the_catalog_and_loaded_models_are_adopted(fake_ollama: FakeOllama) -> None:
    from ark.arbiter.catalog import build
    from ark.config import load_settings

    fake_ollama.add_model("coder:12b")
    fake_ollama.load("llama3.2:1b", keep_alive=-1)  # loaded before ARK started

    async def main() -> None:
        driver = OllamaDriver(fake_ollama.url, deadline=10)
        try:
            facts = await driver.facts()
        finally:
            await driver.close()
        coder = facts["coder:12b"]
        assert coder.weights > 0 and coder.arch is not None and coder.arch.layers == 16 and coder.reported is None
        assert facts["llama3.2:1b"].reported == fake_ollama.loaded["llama3.2:1b"].size
        settings = load_settings(env={"ARK_DATA_DIR": "/nonexistent-ark-test"})
        catalog = build(settings.models, facts, device_total=32 * GIB, large_fraction=0.5)
        assert catalog["coder:12b"].source == "estimate" and catalog["coder:12b"].info.memory > coder.weights
        arbiter = Arbiter(catalog, driver, capacity=32 * GIB, max_wait=30, queue_size=8)
        assert arbiter.adopt("llama3.2:1b", facts["llama3.2:1b"].reported)
        assert not arbiter.adopt("llama3.2:1b") and not arbiter.adopt("unknown:7b")
        arbiter.start()
        try:
            (await arbiter.acquire("llama3.2:1b")).release()  # resident already: no load
        finally:
            await arbiter.close()
        assert arbiter.stats.loads == 0

    asyncio.run(main())


def test_the_driver_talks_through_the_engines_own_client_and_a_hung_load_is_a_driver_error(
    fake_ollama: FakeOllama,
) -> None:
    async def main() -> None:
        engine = OllamaEngine(replace(load_settings(env={}).engines[0], url=fake_ollama.url))
        driver = OllamaDriver(engine.http, poll=0.05, deadline=1)
        try:
            assert driver.http is engine.http  # one client (one connection pool) per engine
            await driver.load("llama3.2:1b")
            assert (await engine.running())["llama3.2:1b"] == (await driver.ps())["llama3.2:1b"]
            await driver.close()  # the engine's client is not the driver's to close
            await driver.unload("llama3.2:1b")
            assert await engine.running() == {}
            fake_ollama.mode = "hang_after_load"  # the load never answers: the deadline turns it into an error
            with pytest.raises(DriverError, match=r"did not load llama3\.2:1b within 1 s"):
                await driver.load("llama3.2:1b")
            assert not await driver.alive()
        finally:
            await engine.close()

    try:
        asyncio.run(main())
    finally:
        httpx.post(fake_ollama.url + "/_fake/restart", timeout=5)  # a hung fake stays hung: bring it back
