"""A stand-in for an OpenAI-compatible inference server (vLLM's ``vllm serve``), for tests: its model
list and its embeddings, on a real TCP port.

vLLM needs a GPU and cannot run where the suite runs. What is reproduced (vllm-project/vllm,
``vllm/entrypoints/pooling/embed/protocol.py``, ``UsageInfo`` and ``ErrorResponse``, read for this module, not copied):

* ``GET /v1/models`` -> ``{"object": "list", "data": [{"id", "object": "model", "created", "owned_by":
  "vllm", "root", "parent": null, "max_model_len"}]}``;
* ``POST /v1/embeddings`` with ``model``, ``input`` (a string or a list of strings) and
  ``encoding_format`` (``float``, the default, or ``base64``: little-endian float32) ->
  ``{"id": "embd-...", "object": "list", "created", "model", "data": [{"index", "object": "embedding",
  "embedding"}], "usage": {"prompt_tokens", "total_tokens", "completion_tokens": 0,
  "prompt_tokens_details": null}}``;
* errors as ``{"object": "error", "message", "type", "param", "code"}`` (vLLM's ErrorResponse), 404 for
  an unknown model.

Vectors are ``dims`` floats seeded by the input's hash, so a test can compute what it must receive.
Not reproduced: tokenisation (a token is a whitespace-separated word), ``dimensions``, chat and
completions, pooling options, authentication.
"""

from __future__ import annotations

import base64
import hashlib
import random
import struct
import time

from aiohttp import web


def vector(text: str, dims: int) -> list[float]:
    """The embedding the stand-in returns for ``text`` (float32 values, so JSON and base64 agree)."""
    rng = random.Random(hashlib.sha256(text.encode()).digest())
    return list(struct.unpack(f"<{dims}f", struct.pack(f"<{dims}f", *(rng.uniform(-1, 1) for _ in range(dims)))))


class FakeOpenAIUpstream:
    def __init__(self, model: str = "embedder", dims: int = 1024) -> None:
        self.model = model
        self.dims = dims
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.requests = 0

    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/embeddings", self._embeddings)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/v1"
        return self.url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _models(self, request: web.Request) -> web.Response:
        created = int(time.time())
        card = {
            "id": self.model,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": self.model,
            "parent": None,
            "max_model_len": 8192,
        }
        return web.json_response({"object": "list", "data": [card]})

    async def _embeddings(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.json()
        if body.get("model") != self.model:
            message = f"The model `{body.get('model')}` does not exist."
            error = {"object": "error", "message": message, "type": "NotFoundError", "param": None, "code": 404}
            return web.json_response(error, status=404)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(inputs):
            values = vector(text, self.dims)
            embedding: object = (
                base64.b64encode(struct.pack(f"<{self.dims}f", *values)).decode() if as_base64 else values
            )
            data.append({"index": index, "object": "embedding", "embedding": embedding})
        tokens = sum(len(text.split()) for text in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0, "prompt_tokens_details": None}
        created = int(time.time())
        payload = {"id": f"embd-{created}", "object": "list", "created": created, "model": self.model, "data": data}
        return web.json_response({**payload, "usage": usage})
