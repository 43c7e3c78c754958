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
_FETCH_S = 120.0  # every image of a job fetched within this
_REQUEST = aiohttp.ClientTimeout(total=30)  # a read of ComfyUI's history or queue


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
    """A job as it runs: its ids, the images its output nodes made, when it started and ended running.

    The prompt id is chosen here and sent with the job (ComfyUI takes a client's UUID), so that a job whose
    ``POST /prompt`` was cut off can still be found and taken back."""

    client_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    prompt_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    outputs: list[dict[str, Any]] = field(default_factory=list)  # {"filename", "subfolder", "type"}
    started: float | None = None  # time.monotonic() at execution_start: the GPU seconds count from there
    ended: float | None = None
    stamps: dict[str, int] = field(default_factory=dict)  # ComfyUI's own millisecond stamps: start, end

    @property
    def seconds(self) -> float:
        """How long ComfyUI ran the job: by its own stamps when it sent them, else as seen here."""
        if "start" in self.stamps and "end" in self.stamps:
            return max(0.0, (self.stamps["end"] - self.stamps["start"]) / 1000)
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
        saved = [image for image in job.outputs if image.get("type") == "output"]
        images = saved or job.outputs  # a workflow that only previews: its temp images are the answer
        if not images:
            raise JobFailed("The workflow ran but made no images (it needs a SaveImage or PreviewImage node).")
        try:
            async with asyncio.timeout(_FETCH_S):
                return [await self._view(image) for image in images]
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ComfyUnavailable(f"ComfyUI at {self.url}: fetching the images failed: {_why(exc)}") from None

    async def _follow(self, graph: Mapping[str, Any], job: Job) -> None:
        http = self._http()
        try:
            ws = await http.ws_connect(f"{self.url}/ws", params={"clientId": job.client_id}, heartbeat=30.0)
        except (aiohttp.ClientError, OSError) as exc:
            raise ComfyUnavailable(f"ComfyUI does not answer at {self.url}: {_why(exc)}") from None
        async with ws:
            await self._queue(graph, job)
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

    async def _queue(self, graph: Mapping[str, Any], job: Job) -> None:
        request = {"prompt": graph, "client_id": job.client_id, "prompt_id": job.prompt_id}
        async with self._http().post(f"{self.url}/prompt", json=request) as reply:
            body = await reply.read()
            if reply.status == 400:
                raise WorkflowRejected(_rejection(_json(body)))
            if reply.status != 200:
                text = body[:200].decode(errors="replace")
                raise ComfyUnavailable(f"ComfyUI refused the job: HTTP {reply.status} {text}")
        queued = _json(body).get("prompt_id")
        if isinstance(queued, str) and queued != job.prompt_id:  # an older ComfyUI makes its own id
            log.warning("ComfyUI ignored ARK's prompt_id (an old version?): a job cut off while queued may run on")
            job.prompt_id = queued

    async def _from_history(self, job: Job) -> None:
        missing = 0
        while True:
            found = await self._history(job)
            if found is None:  # not done: it must be queued or running, else ComfyUI lost it (a restart)
                missing = 0 if job.prompt_id in await self._queued() else missing + 1
                if missing >= 2:  # twice: it did not just end between the two reads
                    raise ComfyUnavailable("ComfyUI lost the job (it restarted?): it is neither queued nor done")
                await asyncio.sleep(_HISTORY_POLL_S)
                continue
            status = found["status"]
            for message in status.get("messages") or []:
                if isinstance(message, list) and len(message) == 2 and isinstance(message[1], dict):
                    _ended(message[0], message[1], job)  # raises for an error or an interruption
            if status.get("status_str") == "error":
                raise JobFailed("ComfyUI's history says the job failed")
            job.ended = job.ended or time.monotonic()
            job.outputs = [img for out in (found.get("outputs") or {}).values() for img in _images(out)]
            return

    async def _history(self, job: Job) -> dict[str, Any] | None:
        """The job's history entry once it has ended; None before."""
        async with self._http().get(f"{self.url}/history/{job.prompt_id}", timeout=_REQUEST) as reply:
            found = _json(await reply.read()).get(job.prompt_id)
        return found if isinstance(found, dict) and isinstance(found.get("status"), dict) else None

    async def _queued(self) -> dict[str, str]:
        """The prompt ids in ComfyUI's queue: "running" or "pending" (``GET /queue``)."""
        async with self._http().get(f"{self.url}/queue", timeout=_REQUEST) as reply:
            queue = _json(await reply.read())
        found = {}
        for state, key in (("running", "queue_running"), ("pending", "queue_pending")):
            for item in queue.get(key) or []:
                if isinstance(item, list) and len(item) > 1 and isinstance(item[1], str):
                    found[item[1]] = state
        return found

    async def _abandon(self, job: Job) -> None:
        """Take the job out of ComfyUI's queue, or interrupt it when it is the one running (only then: an
        older ComfyUI ignores the prompt id and would interrupt whatever runs, a person's job in its UI)."""
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, ComfyUnavailable):
            async with asyncio.timeout(_CONNECT_S):
                http = self._http()
                async with http.post(f"{self.url}/queue", json={"delete": [job.prompt_id]}):
                    pass
                if (await self._queued()).get(job.prompt_id) == "running":
                    async with http.post(f"{self.url}/interrupt", json={"prompt_id": job.prompt_id}):
                        pass
                log.info("ComfyUI job %s abandoned (interrupted or taken out of the queue)", job.prompt_id)

    async def _view(self, image: Mapping[str, Any]) -> bytes:
        params = {key: str(image.get(key) or "") for key in ("filename", "subfolder", "type")}
        async with self._http().get(f"{self.url}/view", params=params) as reply:
            if reply.status != 200:
                raise ComfyUnavailable(f"ComfyUI /view {params['filename']!r}: HTTP {reply.status}")
            data = bytearray()
            async for chunk in reply.content.iter_chunked(1 << 16):
                data += chunk
                if len(data) > _MAX_IMAGE_BYTES:
                    raise ComfyUnavailable(
                        f"ComfyUI /view {params['filename']!r}: larger than {_MAX_IMAGE_BYTES} bytes"
                    )
            return bytes(data)

    async def reserved(self) -> int:
        """What ComfyUI's PyTorch allocator holds now (``/system_stats`` ``torch_vram_total``, 0 when it does
        not say): its models and caches."""
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, ComfyUnavailable):
            async with self._http().get(f"{self.url}/system_stats", timeout=_REQUEST) as reply:
                devices = _json(await reply.read()).get("devices") or []
            value = devices[0].get("torch_vram_total") if devices and isinstance(devices[0], dict) else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return 0


def _ended(kind: str, data: Mapping[str, Any], job: Job) -> bool:
    """Take in one of the job's messages; True when the job is over (raises when it failed)."""
    stamp = data.get("timestamp")
    if isinstance(stamp, int) and not isinstance(stamp, bool):
        if kind == "execution_start":
            job.stamps["start"] = stamp
        elif kind in ("execution_success", "execution_error", "execution_interrupted"):
            job.stamps["end"] = stamp
    if kind == "execution_start":
        job.started = job.started or time.monotonic()
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
    found = images if isinstance(images, list) else []
    return [i for i in found if isinstance(i, dict) and i.get("type") in ("output", "temp") and i.get("filename")]


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
