"""The gateway built in-process with an injected clock: key expiry, rate-limit windows and budget periods
tested by moving time on, never by sleeping through it.

The runtime runs on this test's event loop with the components that serve the API; the engine behind it
is the Ollama stand-in on a real port.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from ark.gateway.admin import AdminApi
from ark.gateway.health import HealthApi
from ark.gateway.openai import OpenAIApi
from ark.runtime import Runtime
from tests.conftest import MASTER_KEY, settings_for
from tests.fakes.clock import ManualClock
from tests.fakes.ollama import FakeOllama

ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}
HI = [{"role": "user", "content": "hi"}]
Scenario = Callable[[httpx.AsyncClient, Runtime, ManualClock], Awaitable[None]]


def run(tmp_path: Path, fake: FakeOllama, scenario: Scenario) -> None:
    settings = settings_for(
        tmp_path,
        f'master_key = "{MASTER_KEY}"\n[monitor]\nembedded = "no"\n[gpu]\ndevice = "ram"\n'
        f'[engines.ollama]\nkind = "ollama"\nurl = "{fake.url}"\ngpu_managed = "no"\n'
        '[models."llama3.2:1b"]\noutput_cost_per_token = 0.125\n',
    )

    async def main() -> None:
        clock = ManualClock()
        rt = Runtime(settings, clock=clock)
        await rt.open()
        try:
            server = await rt.listen("gateway", "127.0.0.1", 0, rt.http)
            await rt.start([OpenAIApi(), AdminApi(), HealthApi()])
            await rt.models.refresh()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as client:
                await scenario(client, rt, clock)
        finally:
            await rt.close()

    asyncio.run(main())


async def new_key(client: httpx.AsyncClient, **fields: object) -> dict[str, str]:
    answer = await client.post("/key/generate", headers=ADMIN, json=fields)
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['key']}"}


def test_a_key_expires_when_the_clock_passes_its_duration(tmp_path: Path, fake_ollama: FakeOllama) -> None:
    async def scenario(client: httpx.AsyncClient, rt: Runtime, clock: ManualClock) -> None:
        key = await new_key(client, duration="1h")
        assert (await client.get("/v1/models", headers=key)).status_code == 200
        clock.advance(3599)
        assert (await client.get("/v1/models", headers=key)).status_code == 200
        clock.advance(2)
        expired = await client.get("/v1/models", headers=key)
        assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]

    run(tmp_path, fake_ollama, scenario)


def test_a_rate_limit_window_opens_again_when_the_clock_moves_on(tmp_path: Path, fake_ollama: FakeOllama) -> None:
    async def scenario(client: httpx.AsyncClient, rt: Runtime, clock: ManualClock) -> None:
        key = await new_key(client, rpm_limit=2)
        assert [(await client.get("/v1/models", headers=key)).status_code for _ in range(3)] == [200, 200, 429]
        clock.advance(30)  # half a minute: half the bucket back, one request
        assert [(await client.get("/v1/models", headers=key)).status_code for _ in range(2)] == [200, 429]
        clock.advance(60)
        assert (await client.get("/v1/models", headers=key)).status_code == 200

    run(tmp_path, fake_ollama, scenario)


def test_a_spent_budget_is_back_when_its_period_ends(tmp_path: Path, fake_ollama: FakeOllama) -> None:
    async def scenario(client: httpx.AsyncClient, rt: Runtime, clock: ManualClock) -> None:
        key = await new_key(client, max_budget=1.0, budget_duration="1d")
        body = {"model": "llama3.2:1b", "messages": HI, "max_tokens": 8}  # reserves 8 x 0.125 = 1 credit
        assert (await client.post("/v1/chat/completions", headers=key, json=body)).status_code == 200
        spent = await client.post("/v1/chat/completions", headers=key, json=body)
        assert spent.status_code == 429 and spent.json()["error"]["code"] == "insufficient_quota"
        clock.advance(86_400 + 1)
        await rt.front.reload_keys()  # what the gateway does every few seconds
        assert (await client.post("/v1/chat/completions", headers=key, json=body)).status_code == 200

    run(tmp_path, fake_ollama, scenario)
