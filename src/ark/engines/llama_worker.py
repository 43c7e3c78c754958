"""llama.cpp in its own process: one worker per loaded model, started and watched by the embedded engine.

``python -m ark.engines.llama_worker --fd N --model FILE ...`` registers llama.cpp's CPU backend (the
variant this CPU really runs, :mod:`ark.engines.cpu_backend`), greets ARK with a ``hello`` frame and
then serves the operations ARK sends over the socket it inherited (:mod:`ark.engines.frames`), one at a
time, on the main thread. A second thread reads the socket, so a ``cancel`` reaches the sampler at the
next token and ``stats`` is answered while a generation runs. When ARK closes the socket, or dies (the
kernel sends SIGKILL then), the worker exits and the operating system takes back every byte it held.

A crash in here (a fault in native code, an abort, the OOM killer) ends this process only: ARK answers
the request it was serving with ``engine_crashed`` and starts a new worker for the next one.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import queue
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ark.engines import frames
from ark.engines.frames import Frame
from ark.errors import ArkError

Send = Callable[[Frame], None]
PR_SET_PDEATHSIG = 1


class Refused(ArkError):
    """The request is at fault (a bad logit_bias, an input longer than the context): answered 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class Cancelled(Exception):
    """Raised by the sampler's hook to stop a generation held by a grammar, whose end token it cannot force."""


@dataclass
class Job:
    id: int
    cancelled: threading.Event
    prompt_tokens: int = 0
    sampled: int = 0  # tokens sampled, counted by the logits processor


class Runner:
    """One model file, its llama.cpp contexts (one to generate, one to embed, each made on first use)."""

    def __init__(self, path: Path, *, n_ctx: int, n_threads: int, n_gpu_layers: int) -> None:
        self.path = path
        self.options = {"n_ctx": n_ctx, "n_threads": n_threads, "n_gpu_layers": n_gpu_layers}
        self._contexts: dict[bool, Any] = {}  # embedding? -> llama_cpp.Llama
        self.jobs: dict[int, Job] = {}  # the one running, read by the socket thread to cancel it
        self.sampled = 0  # every token sampled by this worker, for ``stats``
        self.started = 0  # the id of the last job begun
        self.dropped: set[int] = set()  # jobs cancelled while still queued
        self._lock = threading.Lock()  # jobs, started, dropped: the socket thread and the main thread

    def llama(self, embedding: bool) -> Any:
        if embedding not in self._contexts:
            import llama_cpp

            kwargs: dict[str, Any] = {"model_path": str(self.path), "verbose": False, **self.options}
            if embedding:
                kwargs.update(embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN)
            self._contexts[embedding] = llama_cpp.Llama(**kwargs)
        return self._contexts[embedding]

    def cancel(self, job_id: int) -> None:
        """Called on the socket thread: stop the running job, or drop one still queued (ids only grow)."""
        with self._lock:
            job = self.jobs.get(job_id)
            if job is not None:
                job.cancelled.set()
            elif job_id > self.started:
                self.dropped.add(job_id)

    def serve(self, op: Frame, send: Send) -> None:
        """Carry out one operation and answer it; every failure is an ``error`` frame, never an exit."""
        job = Job(op["id"], threading.Event())
        with self._lock:  # a cancel sees the job either queued (dropped) or running (its flag), never neither
            self.jobs[job.id] = job
            self.started = job.id
            dropped = job.id in self.dropped
            self.dropped.discard(job.id)
        try:
            kind = op.get("op")
            if dropped:  # cancelled before it started
                send({"id": job.id, "type": "done", "data": {}, "sampled": 0, "cancelled": True})
            elif kind == "load":
                self.llama(bool(op.get("embedding")))
                send({"id": job.id, "type": "loaded"})
            elif kind in ("chat", "complete"):
                self._generate(op, job, send)
            elif kind == "embed":
                send({"id": job.id, "type": "done", "data": self._embed(op)})
            else:
                send({"id": job.id, "type": "error", "kind": "invalid", "message": f"unknown op {kind!r}"})
        except Refused as exc:
            send({"id": job.id, "type": "error", "kind": "invalid", "message": str(exc), "param": exc.param})
        except Cancelled:
            send({"id": job.id, "type": "done", "data": {}, "sampled": job.sampled, "cancelled": True})
        except Exception as exc:  # llama.cpp's ValueError/RuntimeError: the engine's failure, said to ARK
            send({"id": job.id, "type": "error", "kind": "engine", "message": f"{type(exc).__name__}: {exc}"})
        finally:
            with self._lock:
                del self.jobs[job.id]

    # -- generation ---------------------------------------------------------------------------------
    def _generate(self, op: Frame, job: Job, send: Send) -> None:
        llama = self.llama(embedding=False)
        tools = op["op"] == "chat" and bool(op.get("tools")) and not _no_call_here(op, llama)
        grammar = tools or (op["op"] == "chat" and isinstance(op.get("response_format"), dict))
        kwargs = self._kwargs(op, llama, job, grammar=grammar)
        if tools:
            run = self._tool_run(op, llama, job, kwargs)
            kwargs = {}
        elif op["op"] == "chat":
            if isinstance(op.get("response_format"), dict):
                kwargs["response_format"] = op["response_format"]
            # a turn that only called tools has no content, which chat templates cannot print
            messages = [m if m.get("content") is not None else {**m, "content": ""} for m in op["messages"]]
            run = lambda **kw: llama.create_chat_completion(messages=messages, **kw)  # noqa: E731
        else:
            run = lambda **kw: llama.create_completion(prompt=op["prompt"], **kw)  # noqa: E731
        if not op.get("stream"):
            send({"id": job.id, "type": "done", "data": run(**kwargs), "sampled": job.sampled})
            return
        last: Frame | None = None
        chunks: Iterator[Frame] = run(stream=True, **kwargs)
        for chunk in chunks:
            if job.cancelled.is_set():
                break
            last = chunk
            send({"id": job.id, "type": "chunk", "data": chunk})
        summary: Frame = {}
        if last is not None and not job.cancelled.is_set():
            # llama-cpp-python sends no usage while streaming: count what the sampler saw. A model that
            # stopped by itself also sampled its end token, which usage does not count; a stop string's
            # tokens are counted.
            ended_by_eos = _finish(last) == "stop" and not op.get("sampling", {}).get("stop") and not tools
            completion = job.sampled - (1 if ended_by_eos and job.sampled else 0)
            summary = {**last, "choices": [], "usage": _usage(job.prompt_tokens, completion)}
        send(
            {
                "id": job.id,
                "type": "done",
                "data": summary,
                "sampled": job.sampled,
                "cancelled": job.cancelled.is_set(),
            }
        )

    def _tool_run(self, op: Frame, llama: Any, job: Job, kwargs: dict[str, Any]) -> Callable[..., Any]:
        """The chat ``op`` with the tools it may call, answered as :mod:`ark.engines.chatml_tools` does; its usage
        counts every token sampled (the function chosen, the arguments, the end of each)."""
        from ark.engines import chatml_tools

        if op.get("tool_format") == "auto" and not chatml_tools.is_chatml(llama):
            raise Refused(
                "This model cannot call tools: its chat template is not ChatML, the turns the embedded engine "
                'offers tools in (tool_format = "chatml-function-calling" on the engine offers them anyway)',
                "tools",
            )
        if (name := chatml_tools.bad_name(op["tools"])) is not None:
            raise Refused(f"A function name must be 1 to 64 letters, digits, '_' or '-', not {name[:80]!r}", "tools")
        choice = op.get("tool_choice")
        names = {t["function"]["name"] for t in op["tools"]}
        if isinstance(choice, dict) and (choice.get("function") or {}).get("name") not in names:
            raise Refused("tool_choice must name one of the tools", "tool_choice")

        def run(stream: bool = False) -> Any:
            chunks = chatml_tools.answer(llama, op, kwargs, lambda: job.sampled)
            if stream:
                return chunks
            return {**chatml_tools.gather(chunks), "usage": _usage(job.prompt_tokens, job.sampled)}

        return run

    def _kwargs(self, op: Frame, llama: Any, job: Job, *, grammar: bool = False) -> dict[str, Any]:
        sampling: Frame = op.get("sampling") or {}
        bias: dict[int, float] = {}
        if isinstance(op.get("logit_bias"), dict):
            try:
                bias = {int(k): float(v) for k, v in op["logit_bias"].items()}
            except (TypeError, ValueError):
                raise Refused("logit_bias must map token ids to numbers", "logit_bias") from None
        # llama-cpp-python treats max_tokens=None as "until the context is full"
        kwargs: dict[str, Any] = {"logits_processor": self._hooks(llama, job, bias, grammar), "max_tokens": None}
        for key in ("max_tokens", "temperature", "top_p", "seed"):
            if sampling.get(key) is not None:
                kwargs[key] = sampling[key]
        for key in ("presence_penalty", "frequency_penalty"):
            if isinstance(op.get(key), int | float) and not isinstance(op.get(key), bool):
                kwargs[key] = float(op[key])
        if sampling.get("stop"):
            kwargs["stop"] = list(sampling["stop"])
        return kwargs

    def _hooks(self, llama: Any, job: Job, bias: dict[int, float], grammar: bool = False) -> Any:
        import llama_cpp
        import numpy as np

        eos = llama.token_eos()
        n_vocab = llama.n_vocab()
        if any(not 0 <= token < n_vocab for token in bias):
            raise Refused(f"logit_bias names a token outside the vocabulary (0-{n_vocab - 1})", "logit_bias")
        ids = np.array(list(bias), dtype=np.intc)
        values = np.array(list(bias.values()), dtype=np.single)

        def hook(input_ids: Any, scores: Any) -> Any:
            if job.sampled == 0:
                job.prompt_tokens = len(input_ids)
            job.sampled += 1
            self.sampled += 1
            if len(ids):
                # applied here, not through llama-cpp-python's logit_bias: 0.3.36 drops both its own
                # processor and ours when given both (LogitsProcessorList.extend returns None)
                scores = scores.copy()
                scores[ids] += values
            if job.cancelled.is_set():
                if grammar:  # the grammar may forbid the end token here, and llama.cpp aborts when none is left
                    raise Cancelled
                scores = np.full_like(scores, -np.inf)  # force the end token: llama.cpp stops at once
                scores[eos] = 0.0
            return scores

        return llama_cpp.LogitsProcessorList([hook])

    def _embed(self, op: Frame) -> Frame:
        llama = self.llama(embedding=True)
        try:
            result: Frame = llama.create_embedding(op["inputs"])
        except ValueError as exc:  # e.g. an input longer than the context
            raise Refused(f"Cannot embed this input: {exc}", "input") from exc
        return result


def _no_call_here(op: Frame, llama: Any) -> bool:
    """A chat that may call no tool ("none") on a model the tools are not offered to: its own template serves it."""
    from ark.engines import chatml_tools

    return op.get("tool_choice") == "none" and op.get("tool_format") == "auto" and not chatml_tools.is_chatml(llama)


def _finish(chunk: Frame) -> str | None:
    choices = chunk.get("choices") or [{}]
    reason: str | None = choices[0].get("finish_reason")
    return reason


def _usage(prompt: int, completion: int) -> Frame:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class Channel:
    """The worker's end of the socket: frames written whole by either thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()

    def send(self, frame: Frame) -> None:
        data = frames.encode(frame)
        with self._lock:
            self.sock.sendall(data)


def _die_with_parent() -> None:
    """SIGKILL this process when ARK's process ends, however it ends (Linux; elsewhere the socket's EOF)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # ARK died before the line above ran
        os._exit(1)


def _listen(channel: Channel, runner: Runner, ops: queue.Queue[Frame | None]) -> None:
    """The socket thread: cancel and stats at once, the rest to the main thread in order."""
    try:
        while (frame := frames.read_blocking(channel.sock)) is not None:
            if frame.get("op") == "cancel":
                runner.cancel(frame["id"])  # the id of the job to stop
            elif frame.get("op") == "stats":
                channel.send({"id": frame["id"], "type": "stats", "data": {"sampled": runner.sampled}})
            else:
                ops.put(frame)
    except (OSError, frames.FrameError):
        pass
    ops.put(None)  # ARK is gone or spoke garbage: finish what runs, then exit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ark.engines.llama_worker")
    parser.add_argument("--fd", type=int, required=True, help="the socket inherited from ARK")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--n-threads", type=int, default=0)
    parser.add_argument("--n-gpu-layers", type=int, default=-1)
    parser.add_argument("--cpu-variant", default="auto")
    parser.add_argument("--exclude", default="", help="CPU variants not to use, comma-separated")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in ARK's terminal is ARK's to handle
    _die_with_parent()
    channel = Channel(socket.socket(fileno=args.fd))
    from ark.engines.cpu_backend import load_cpu_backend

    try:
        variant = load_cpu_backend(args.cpu_variant, exclude=[v for v in args.exclude.split(",") if v])
    except Exception as exc:
        channel.send({"id": 0, "type": "error", "kind": "engine", "message": f"llama.cpp's CPU backend: {exc}"})
        return 1
    runner = Runner(
        args.model,
        n_ctx=args.n_ctx,
        n_threads=args.n_threads or max(1, os.cpu_count() or 1),
        n_gpu_layers=args.n_gpu_layers,
    )
    ops: queue.Queue[Frame | None] = queue.Queue()
    threading.Thread(target=_listen, args=(channel, runner, ops), name="ark-worker-socket", daemon=True).start()
    channel.send({"id": 0, "type": "hello", "data": {"pid": os.getpid(), "variant": variant}})
    while (op := ops.get()) is not None:
        try:
            runner.serve(op, channel.send)
        except OSError:  # ARK closed the socket while we answered
            break
    sys.stdout.flush()
    os._exit(0)  # not the interpreter's teardown: llama.cpp's contexts go with the process, at once


if __name__ == "__main__":
    sys.exit(main())
