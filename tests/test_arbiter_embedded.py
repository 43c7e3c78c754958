"""The embedded llama.cpp engine under the arbiter: two tiny real GGUFs on a device that holds one at a time
(a real `ark up`; loads and unloads happen in llama.cpp inside it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.conftest import MASTER_KEY, ArkProcess, embedded_ark, stop_ark

MASTER = {"Authorization": f"Bearer {MASTER_KEY}"}
SMALL_DEVICE = """
[gpu]
device = "virtual"
memory_gb = 1
reserve_gb = 0
[models."tiny-a"]
memory_gb = 0.6
[models."tiny-b"]
memory_gb = 0.6
priority = "high"
"""


def chat(ark: ArkProcess, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return httpx.post(ark.api + "/chat/completions", headers=MASTER, json=body, timeout=60)


def models(ark: ArkProcess) -> dict[str, dict[str, Any]]:
    status = httpx.get(ark.url + "/admin/gpu", headers=MASTER, timeout=5).json()
    return {m["model"]: m for m in status["models"]}


def test_two_models_that_do_not_fit_together_take_turns(tmp_path: Path, tiny_gguf: Path) -> None:
    ark = embedded_ark(tmp_path, tiny_gguf, models=("tiny-a", "tiny-b"), extra=SMALL_DEVICE)
    try:
        assert {m: s["resident"] for m, s in models(ark).items()} == {"tiny-a": False, "tiny-b": False}
        assert chat(ark, "tiny-a").status_code == 200
        assert {m: s["resident"] for m, s in models(ark).items()} == {"tiny-a": True, "tiny-b": False}
        answer = chat(ark, "tiny-b")  # 0.6 + 0.6 > 1: tiny-a is freed in llama.cpp first
        assert answer.status_code == 200 and answer.json()["model"] == "tiny-b"
        state = models(ark)
        assert not state["tiny-a"]["resident"] and state["tiny-b"]["resident"]
        assert state["tiny-b"]["priority"] == "high" and state["tiny-b"]["memory_source"] == "config"
        embedded = httpx.post(ark.api + "/embeddings", headers=MASTER, json={"model": "tiny-a", "input": "x"})
        assert embedded.status_code == 200 and len(embedded.json()["data"][0]["embedding"]) > 0
        assert models(ark)["tiny-a"]["resident"] and not models(ark)["tiny-b"]["resident"]
        log = ark.log.read_text()
        assert "arbiter: unloading tiny-a" in log and "arbiter: unloading tiny-b" in log
        assert ark.metric("ark_model_swaps_total") == 2.0 and ark.metric("ark_model_load_seconds_count") == 3.0
    finally:
        stop_ark(ark)


def test_without_a_gpu_system_memory_is_the_device_and_the_catalog_reads_the_gguf(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    ark = embedded_ark(tmp_path, tiny_gguf, models=("tiny",), extra='[gpu]\ndevice = "ram"\n')
    try:
        status = httpx.get(ark.url + "/admin/gpu", headers=MASTER, timeout=5).json()
        assert status["device"] == "system memory" and status["reading"]["kind"] == "ram"
        tiny = status["models"][0]
        assert tiny["model"] == "tiny" and tiny["memory_source"] == "estimate"
        assert tiny_gguf.stat().st_size < tiny["memory_bytes"] < tiny_gguf.stat().st_size + 256 * 1024**2
        assert chat(ark, "tiny").status_code == 200
        assert models(ark)["tiny"]["resident"]
        unloaded = httpx.post(ark.url + "/admin/gpu/unload", headers=MASTER, json={"model": "tiny"}, timeout=30)
        assert unloaded.json() == {"model": "tiny", "unloaded": True}  # confirmed: llama.cpp holds it no more
        assert chat(ark, "tiny").status_code == 200  # and it comes back on the next request
        assert ark.metric("ark_gpu_memory_bytes", gpu="0", kind="total") > 0
    finally:
        stop_ark(ark)
