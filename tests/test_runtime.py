"""The runtime in-process: a hello-world component plugs in without touching any other package (its
route on the gateway's listener, its background task, its supervised service, its health in
/health/ready and /admin/services), and the components `ark up` lists start and close in order."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from ark.runtime import COMPONENTS, Component, Runtime, Status, serve
from ark.supervisor import Health, ServiceSpec
from ark.wire import Request, Responder
from tests.conftest import MASTER_KEY, free_port, settings_for, wait_until

ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}


class Hello(Component):
    """What a newcomer writes (docs/architecture.md): one route, one task, one service, one status."""

    name = "hello"

    def __init__(self, service_port: int) -> None:
        self.service_port = service_port
        self.ticks = 0
        self.closed = False
        self.listening_at_close: bool | None = None
        self.gateway_port = 0
        self.rt: Runtime | None = None

    async def start(self, rt: Runtime) -> None:
        self.rt = rt
        self.gateway_port = rt.listeners["gateway"].port
        rt.http.add("GET", "/hello/{who}", self.hello)
        rt.background(self._tick(), "hello-tick")

    async def _tick(self) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(0.01)

    async def hello(self, request: Request, responder: Responder) -> None:
        await responder.send(200, f"hello {request.params['who']}".encode(), [("content-type", "text/plain")])

    def services(self, rt: Runtime) -> Sequence[ServiceSpec]:
        argv = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(self.service_port)]
        return [ServiceSpec("hello-web", argv, health=Health(tcp=("127.0.0.1", self.service_port)))]

    def status(self) -> list[Status]:
        return [Status("hello", "running" if self.ticks else "starting", ready=self.ticks > 0)]

    async def close(self) -> None:
        self.closed = True
        try:  # by now the gateway's listener has stopped accepting: no request reaches a closed component
            _, writer = await asyncio.open_connection("127.0.0.1", self.gateway_port)
        except OSError:
            self.listening_at_close = False
        else:
            writer.close()
            self.listening_at_close = True


@dataclass
class Running:
    url: str
    hello: Hello
    stop: asyncio.Event
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    order: list[str] = field(default_factory=list)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    port = free_port()
    settings = settings_for(
        tmp_path,
        f'master_key = "{MASTER_KEY}"\n[gateway]\nlisten = "127.0.0.1:{port}"\n'
        f'[console]\nlisten = "127.0.0.1:{free_port()}"\n[monitor]\nembedded = "no"\n'
        '[engines.embedded]\nkind = "embedded"\nbundled_model = false\n',
    )
    hello = Hello(free_port())
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    started = threading.Event()
    names: list[str] = []

    def main() -> None:
        components = [*COMPONENTS(), hello]
        names.extend(c.name for c in components)
        loop.run_until_complete(serve(settings, components=components, stop=stop, on_started=lambda rt: started.set()))

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert started.wait(30)
    yield Running(f"http://127.0.0.1:{port}", hello, stop, loop, thread, names)
    if thread.is_alive():
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
    loop.close()


def test_a_hello_world_component_plugs_in_with_its_route_task_service_and_health(running: Running) -> None:
    assert httpx.get(running.url + "/hello/world", timeout=10).text == "hello world"
    wrong = httpx.post(running.url + "/hello/world", timeout=10)  # the gateway's convention: OpenAI's 404
    assert wrong.status_code == 404 and wrong.json()["error"]["code"] == "unknown_url"

    def ready() -> dict[str, object]:
        return httpx.get(running.url + "/health/ready", timeout=10).json()  # type: ignore[no-any-return]

    assert wait_until(lambda: ready()["status"] == "ready", 30)
    assert ready()["components"]["hello"] == {"state": "running"}  # type: ignore[index]

    def services() -> list[dict[str, object]]:
        return httpx.get(running.url + "/admin/services", headers=ADMIN, timeout=10).json()["services"]  # type: ignore[no-any-return]

    assert wait_until(lambda: any(s["name"] == "hello-web" and s["state"] == "running" for s in services()), 30)
    service = next(s for s in services() if s["name"] == "hello-web")
    assert isinstance(service["pid"], int)
    assert httpx.get(f"http://127.0.0.1:{running.hello.service_port}/", timeout=10).status_code == 200
    # the OpenAI API, the management API and health are components beside it, on the same listener
    assert running.order[-1] == "hello" and {"openai-api", "admin-api", "health", "console"} <= set(running.order)
    assert httpx.get(running.url + "/v1/models", headers=ADMIN, timeout=10).status_code == 200


def test_a_component_is_closed_and_its_service_stopped_when_the_runtime_stops(running: Running) -> None:
    assert wait_until(lambda: running.hello.ticks > 0, 30)
    assert wait_until(lambda: _answers(running.hello.service_port), 30)
    running.loop.call_soon_threadsafe(running.stop.set)
    running.thread.join(30)
    assert running.hello.closed and running.hello.listening_at_close is False
    assert not _answers(running.hello.service_port)


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
