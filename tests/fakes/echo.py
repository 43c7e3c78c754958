"""A stand-in for the services behind Nginx (Open WebUI, ComfyUI, Grafana...): it tells what it received.

``GET|POST /anything`` -> JSON ``{"path", "method", "headers": {name: value}}`` with the headers as
they arrived (names as sent), so a test can see exactly what Nginx passed on, and what it did not.
``/ws`` is a websocket that echoes each text message back.
"""

from __future__ import annotations

from aiohttp import WSMsgType, web


class EchoServer:
    def __init__(self, name: str) -> None:
        self.name = name
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application()
        app.router.add_get("/ws", self._ws)
        app.router.add_route("*", "/{tail:.*}", self._echo)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, host, port).start()
        self.port = self.runner.addresses[0][1]
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _echo(self, request: web.Request) -> web.Response:
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in request.raw_headers}
        body = {"service": self.name, "path": request.path_qs, "method": request.method, "headers": headers}
        return web.json_response(body)

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await ws.send_str(f"{self.name}:{message.data}")
        return ws
