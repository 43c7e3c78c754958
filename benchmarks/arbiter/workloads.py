"""The benchmark's workloads on the reference box, generated from a fixed seed.

Each generator returns the lines of a JSON-lines workload file (the format of
``ark gpu simulate``), the catalog line first, so that every file is self-contained.
The same seed gives the same files on every machine (``random.Random(seed)``).

The reference box (docs/arbiter.md): a 32 GB GPU (1 GB reserve), a 23 GB "thinker"
(large, high priority), a 15 GB coder, a 13 GB third model (low priority), a pinned
0.3 GB embedding model, and ComfyUI / render jobs as memory holds. Load times are
the simulator's default 2 GB/s; generation speeds assume a memory-bound decoder
reading ~1 TB/s of weights (tokens/s ~ 1000 / GB).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

SEED = 20261127
DURATION = 1800.0  # seconds of traffic per workload

CATALOG: dict[str, Any] = {
    "gpu_memory_gb": 32,
    "reserve_gb": 1,
    # long enough for a turn: an answer runs up to 22 s and a swap takes 12 s, so a request that comes as its
    # own model drains can be served within max_wait plus one swap (docs/arbiter.md, "How long a request waits")
    "max_wait_s": 45,
    "swap_delay_s": 15,  # a box many people share: batch more per swap (docs/arbiter.md, "The swap delay")
    "queue_size": 256,
    "large_fraction": 0.5,
    "unload_seconds": 0.5,
    "models": {
        "thinker": {
            "memory_gb": 23,
            "priority": "high",
            "load_seconds": 11.5,
            "tokens_per_second": 40,
            "prefill_tokens_per_second": 1500,
        },
        "coder": {"memory_gb": 15, "load_seconds": 7.5, "tokens_per_second": 65, "prefill_tokens_per_second": 2500},
        "third": {
            "memory_gb": 13,
            "priority": "low",
            "load_seconds": 6.5,
            "tokens_per_second": 75,
            "prefill_tokens_per_second": 3000,
        },
        "embed": {
            "memory_gb": 0.3,
            "priority": "high",
            "pinned": True,
            "load_seconds": 0.5,
            "prefill_tokens_per_second": 20000,
            "parallel": 8,
        },
    },
}

Job = dict[str, Any]


def _chat(rng: random.Random, t: float, model: str) -> Job:
    prompt, answer = rng.randint(200, 3000), rng.randint(100, 800)
    return {"t": round(t, 3), "model": model, "prompt_tokens": prompt, "max_tokens": answer}


def _embed(rng: random.Random, t: float) -> Job:
    return {"t": round(t, 3), "model": "embed", "prompt_tokens": rng.randint(50, 500), "max_tokens": 0}


def _poisson(rng: random.Random, mean_gap: float, end: float = DURATION) -> list[float]:
    times, t = [], rng.expovariate(1 / mean_gap)
    while t < end:
        times.append(t)
        t += rng.expovariate(1 / mean_gap)
    return times


def mixed(rng: random.Random, mean_gap: float = 8.0) -> list[Job]:
    """Steady mixed traffic: one request every 8 s on average (Poisson), 30% thinker, 30% coder,
    15% third, 25% embeddings."""
    jobs = []
    for t in _poisson(rng, mean_gap):
        model = rng.choices(["thinker", "coder", "third", "embed"], [30, 30, 15, 25])[0]
        jobs.append(_embed(rng, t) if model == "embed" else _chat(rng, t, model))
    return jobs


def bursts(rng: random.Random) -> list[Job]:
    """Bursts of alternating large models: every ~90 s (60-120 s) a burst of 10 requests, one every
    1-3 s, alternating thinker and coder (two agents, one on each model)."""
    jobs, t = [], 5.0
    while t < DURATION:
        at, first = t, rng.random() < 0.5
        for i in range(10):
            jobs.append(_chat(rng, at, "thinker" if (i % 2 == 0) == first else "coder"))
            at += rng.uniform(1.0, 3.0)
        t += rng.uniform(60.0, 120.0)
    return jobs


def rag(rng: random.Random) -> list[Job]:
    """Embeddings interleaved with chat: a question every 10 s on average (Poisson) embeds 1-3
    passages, then asks coder (50%), third (30%) or thinker (20%) half a second later."""
    jobs = []
    for t in _poisson(rng, 10.0):
        jobs += [_embed(rng, t + 0.05 * i) for i in range(rng.randint(1, 3))]
        jobs.append(_chat(rng, t + 0.5, rng.choices(["coder", "third", "thinker"], [50, 30, 20])[0]))
    return jobs


def memory_holds(rng: random.Random) -> list[Job]:
    """ComfyUI and render jobs holding GPU memory during chat: chat every 10 s (thinker 40%, coder 40%,
    embeddings 20%); a ComfyUI job (12 GB, 30-60 s) every 90 s on average; a render
    (8 GB, 300 s, low priority) every 10 minutes."""
    jobs = []
    for t in _poisson(rng, 10.0):
        model = rng.choices(["thinker", "coder", "embed"], [40, 40, 20])[0]
        jobs.append(_embed(rng, t) if model == "embed" else _chat(rng, t, model))
    for t in _poisson(rng, 90.0):
        jobs.append(_hold(t, "comfyui", 12, rng.uniform(30, 60), "medium"))
    for t in (60.0 + 600.0 * k for k in range(3)):
        jobs.append(_hold(t, "render", 8, 300, "low"))
    return sorted(jobs, key=lambda j: j["t"])


def _hold(t: float, holder: str, memory_gb: float, seconds: float, priority: str) -> Job:
    return {
        "t": round(t, 3),
        "kind": "hold",
        "holder": holder,
        "memory_gb": memory_gb,
        "seconds": round(seconds, 1),
        "priority": priority,
    }


WORKLOADS: dict[str, Callable[[random.Random], list[Job]]] = {
    "mixed": mixed,
    "bursts": bursts,
    "rag": rag,
    "leases": memory_holds,  # named before memory holds were; the name seeds its random numbers, so it stays
}


def lines(name: str, seed: int = SEED) -> list[str]:
    """The workload file ``name`` as lines: the catalog, then the jobs sorted by time."""
    return _file(WORKLOADS[name](random.Random(f"{seed}-{name}")))


def mixed_lines(mean_gap: float, seed: int = SEED) -> list[str]:
    """The mixed workload at another load (same seed and mix): for the sensitivity table."""
    return _file(mixed(random.Random(f"{seed}-mixed"), mean_gap))


def _file(jobs: list[Job]) -> list[str]:
    return [json.dumps({"catalog": CATALOG})] + [json.dumps(j) for j in sorted(jobs, key=lambda j: j["t"])]
