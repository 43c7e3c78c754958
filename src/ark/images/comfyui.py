"""ComfyUI's job API, as its server.py and execution.py define it, and the one place where its failures
become ARK's errors.

A job: open ``/ws?clientId=ID`` first (so no message is missed), ``POST /prompt`` with the workflow and that
client id, then follow the messages for the job's ``prompt_id``: ``execution_start``, ``executing`` per
node, ``progress`` per sampler step, ``executed`` with an output node's images, and one of
``execution_success``, ``execution_error`` or ``execution_interrupted``. Binary frames are previews, and
other jobs' messages are someone else's. If the socket drops mid-job, ``/history/{prompt_id}`` says how
the job ended. The images come from ``/view``. A job that outlives its deadline, or whose caller goes
away, is interrupted (``POST /interrupt`` with its prompt id) or taken out of the queue (``POST /queue``
``{"delete": [...]}``), so that ComfyUI does not go on drawing for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from ark.errors import InvalidRequest, UpstreamError, UpstreamTimeout

log = logging.getLogger("ark.images")
_HISTORY_POLL_S = 0.25
_CONNECT_S = 5.0
_MAX_IMAGE_BYTES = 64 * 1024**2


class WorkflowRejected(InvalidRequest):
    """ComfyUI's validation refused the workflow (its ``node_errors``): the node and input are named."""

    code = "workflow_rejected"
    reason = "rejected"


class JobFailed(UpstreamError):
    """A node raised while the job ran (``execution_error``)."""

    code = "image_job_failed"
    reason = "node_error"


class JobInterrupted(UpstreamError):
    """Someone interrupted the job on ComfyUI (its UI, another client)."""

    code = "image_job_interrupted"
    reason = "interrupted"


class JobTimeout(UpstreamTimeout):
    reason = "timeout"


class ComfyUnavailable(UpstreamError):
    """ComfyUI does not answer, or went away mid-job."""

    code = "comfyui_unavailable"
    reason = "comfyui_down"


@dataclass
class Job:
    """A job as it runs: its id once queued, the images its output nodes made, when it started running."""

    client_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    prompt_id: str | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)  # {"filename", "subfolder", "type"}
    started: float | None = None  # time.monotonic() at execution_start: the GPU seconds count from there
    ended: float | None = None
    steps: tuple[int, int] = (0, 0)  # the sampler's progress (value, max)

    @property
    def seconds(self) -> float:
        if self.started is None:
            return 0.0
        return max(0.0, (self.ended or time.monotonic()) - self.started)


class ComfyClient:
    """One client per ComfyUI: its HTTP session is opened on first use and closed with ``close``."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=_CONNECT_S)
            self._session = aiohttp.ClientSession(timeout=timeout, json_serialize=lambda v: orjson.dumps(v).decode())
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def run(self, graph: Mapping[str, Any], job: Job, limit_s: float) -> list[bytes]:
        """Run ``graph`` and return its images (PNG bytes, in the order the output nodes made them)."""
        try:
            async with asyncio.timeout(limit_s):
                try:
                    await self._follow(graph, job)
                except (aiohttp.ClientError, OSError) as exc:
                    raise ComfyUnavailable(f"ComfyUI at {self.url} failed during the job: {_why(exc)}") from None
        except TimeoutError:
            await self._abandon(job)
            raise JobTimeout(
                f"The image job ran past its {limit_s:g} s ([images] job_timeout_s) and was interrupted."
            ) from None
        except asyncio.CancelledError:  # the client went away: ComfyUI must not go on for nobody
            await asyncio.shield(self._abandon(job))
            raise
        try:
            return [await self._view(image) for image in job.outputs]
        except (aiohttp.ClientError, OSError) as exc:
            raise ComfyUnavailable(f"ComfyUI at {self.url}: fetching the images failed: {_why(exc)}") from None

    async def _follow(self, graph: Mapping[str, Any], job: Job) -> None:
        http = self._http()
        try:
            ws = await http.ws_connect(f"{self.url}/ws", params={"clientId": job.client_id}, heartbeat=30.0)
        except (aiohttp.ClientError, OSError) as exc:
            raise ComfyUnavailable(f"ComfyUI does not answer at {self.url}: {_why(exc)}") from None
        async with ws:
            job.prompt_id = await self._queue(graph, job.client_id)
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue  # binary frames are previews of the image being drawn
                try:
                    event = orjson.loads(message.data)
                    kind, data = event["type"], event["data"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue
                if isinstance(data, dict) and data.get("prompt_id") == job.prompt_id and _ended(kind, data, job):
                    return
        # the socket dropped mid-job (ComfyUI restarted, a proxy cut it): its history says how the job ended
        log.info("ComfyUI's websocket closed during job %s; reading its history", job.prompt_id)
        await self._from_history(job)

    async def _queue(self, graph: Mapping[str, Any], client_id: str) -> str:
        async with self._http().post(f"{self.url}/prompt", json={"prompt": graph, "client_id": client_id}) as reply:
            body = await reply.read()
            if reply.status == 400:
                raise WorkflowRejected(_rejection(_json(body)))
            if reply.status != 200:
                raise ComfyUnavailable(
                    f"ComfyUI refused the job: HTTP {reply.status} {body[:200].decode(errors='replace')}"
                )
        prompt_id = _json(body).get("prompt_id")
        if not isinstance(prompt_id, str):
            raise ComfyUnavailable("ComfyUI queued the job without a prompt_id")
        return prompt_id

    async def _from_history(self, job: Job) -> None:
        while True:
            async with self._http().get(f"{self.url}/history/{job.prompt_id}") as reply:
                found = _json(await reply.read()).get(job.prompt_id or "")
            status = found.get("status") if isinstance(found, dict) else None
            if isinstance(status, dict):  # the job ran (history lists a job once it has ended)
                for message in status.get("messages") or []:
                    if isinstance(message, list) and len(message) == 2 and isinstance(message[1], dict):
                        _ended(message[0], message[1], job)  # raises for an error or an interruption
                if status.get("status_str") == "error":
                    raise JobFailed("ComfyUI's history says the job failed")
                job.ended = job.ended or time.monotonic()
                outputs = found.get("outputs") if isinstance(found, dict) else None
                job.outputs = [img for out in (outputs or {}).values() for img in _images(out)]
                return
            await asyncio.sleep(_HISTORY_POLL_S)

    async def _abandon(self, job: Job) -> None:
        """Take the job out of ComfyUI's queue, and interrupt it if it is the one running."""
        if job.prompt_id is None:
            return
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with asyncio.timeout(_CONNECT_S):
                http = self._http()
                async with http.post(f"{self.url}/queue", json={"delete": [job.prompt_id]}):
                    pass
                async with http.post(f"{self.url}/interrupt", json={"prompt_id": job.prompt_id}):
                    pass
                log.info("ComfyUI job %s abandoned (interrupted or taken out of the queue)", job.prompt_id)

    async def _view(self, image: Mapping[str, Any]) -> bytes:
        params = {key: str(image.get(key) or "") for key in ("filename", "subfolder", "type")}
        async with self._http().get(f"{self.url}/view", params=params) as reply:
            if reply.status != 200:
                raise ComfyUnavailable(f"ComfyUI /view {params['filename']!r}: HTTP {reply.status}")
            return await reply.content.read(_MAX_IMAGE_BYTES)

    async def reserved(self) -> int | None:
        """What ComfyUI's PyTorch allocator holds now (``/system_stats`` ``torch_vram_total``): after a job,
        the memory its models took. None when it does not say."""
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, ValueError):
            async with asyncio.timeout(_CONNECT_S), self._http().get(f"{self.url}/system_stats") as reply:
                devices = _json(await reply.read()).get("devices") or []
                value = devices[0].get("torch_vram_total") if devices and isinstance(devices[0], dict) else None
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return value
        return None


def _ended(kind: str, data: Mapping[str, Any], job: Job) -> bool:
    """Take in one of the job's messages; True when the job is over (raises when it failed)."""
    if kind == "execution_start":
        job.started = time.monotonic()
    elif kind == "progress":
        job.steps = (int(data.get("value") or 0), int(data.get("max") or 0))
    elif kind == "executed":
        job.outputs += _images(data.get("output"))
    elif kind == "execution_success" or (kind == "executing" and data.get("node") is None):
        job.ended = time.monotonic()
        return True
    elif kind == "execution_error":
        job.ended = time.monotonic()
        node, node_type = data.get("node_id"), data.get("node_type")
        message = str(data.get("exception_message") or data.get("exception_type") or "it failed").strip()
        raise JobFailed(f"ComfyUI node {node} ({node_type}) failed: {message[:500]}")
    elif kind == "execution_interrupted":
        job.ended = time.monotonic()
        raise JobInterrupted(f"The image job was interrupted on ComfyUI (at node {data.get('node_id')}).")
    return False


def _images(output: Any) -> list[dict[str, Any]]:
    images = output.get("images") if isinstance(output, dict) else None
    return [
        i for i in images or [] if isinstance(i, dict) and i.get("type", "output") == "output" and i.get("filename")
    ]


def _rejection(body: Mapping[str, Any]) -> str:
    """ComfyUI's 400 as one line: each failing node with its class and input, else its error message."""
    problems = []
    node_errors = body.get("node_errors")
    for node, found in node_errors.items() if isinstance(node_errors, dict) else ():
        if not isinstance(found, dict):
            continue
        for error in found.get("errors") or []:
            if not isinstance(error, dict):
                continue
            name = (error.get("extra_info") or {}).get("input_name")
            where = f"node {node} ({found.get('class_type')})" + (f", input {name}" if name else "")
            problems.append(f"{where}: {error.get('message')}: {error.get('details') or ''}".rstrip(": "))
    error = body.get("error")
    if not problems and isinstance(error, dict):
        problems.append(f"{error.get('message')}: {error.get('details') or ''}".rstrip(": "))
    return "ComfyUI refused the workflow: " + ("; ".join(problems) or "no reason given")


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ComfyUnavailable(f"ComfyUI answered something that is not JSON: {body[:120]!r}") from None
    return value if isinstance(value, dict) else {}


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
