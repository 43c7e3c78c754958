"""The GPU shared with what is not a model: ComfyUI's footprint in every plan, memory holds for renders and
image jobs (`POST|DELETE /admin/gpu/holds`, and `/admin/gpu/leases`, its old name), `ark gpu free-comfyui`, and
the device's metrics (a real `ark up` against the Ollama and ComfyUI stand-ins)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import MASTER_KEY, ArkProcess, LoopThread, start_ark, stop_ark, wait_until
from tests.fakes.comfyui import FakeComfyUI
from tests.fakes.ollama import FakeOllama

GIB = 1024**3
MASTER = {"Authorization": f"Bearer {MASTER_KEY}"}
CONFIG = """master_key = "{key}"
[gateway]
listen = "127.0.0.1:{{PORT}}"
[gpu]
device = "virtual"
memory_gb = 16
reserve_gb = 0
comfyui_url = "{comfy}"
comfyui_idle_gb = 0.75
[engines.ollama]
kind = "ollama"
url = "{url}"
"""


@pytest.fixture
def comfy(loop_thread: LoopThread) -> Iterator[FakeComfyUI]:
    fake = FakeComfyUI(vram_total=16 * GIB, idle=3 * GIB // 4, models=4 * GIB)
    loop_thread.run(fake.start())
    yield fake
    loop_thread.run(fake.stop())


@pytest.fixture
def ark(tmp_path: object, fake_ollama: FakeOllama, comfy: FakeComfyUI) -> Iterator[ArkProcess]:
    fake_ollama.add_model("thinker:20b")  # ~11.4 GiB loaded: large on a 16 GiB device
    fake_ollama.add_model("coder:12b")  # ~6.8 GiB
    fake_ollama.vram = 16 * GIB
    process = start_ark(CONFIG.format(key=MASTER_KEY, url=fake_ollama.url, comfy=comfy.url), tmp_path)  # type: ignore[arg-type]
    yield process
    stop_ark(process)


def chat(ark: ArkProcess, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return httpx.post(ark.api + "/chat/completions", headers=MASTER, json=body, timeout=30)


def status(ark: ArkProcess) -> dict:  # type: ignore[type-arg]
    return httpx.get(ark.url + "/admin/gpu", headers=MASTER, timeout=5).json()  # type: ignore[no-any-return]


def test_comfyui_is_freed_before_a_large_model_and_counted_in_the_plan(
    ark: ArkProcess, fake_ollama: FakeOllama, comfy: FakeComfyUI
) -> None:
    before = status(ark)
    assert before["comfyui"] == {"used_bytes": 4 * GIB + 3 * GIB // 4, "idle_bytes": 3 * GIB // 4, "busy": False}
    assert ark.metric("ark_gpu_memory_bytes", gpu="0", kind="comfyui") == 4 * GIB + 3 * GIB // 4
    assert ark.metric("ark_gpu_memory_bytes", gpu="0", kind="total") == 16 * GIB
    assert chat(ark, "coder:12b").status_code == 200  # 6.8 + 4.75 fit in 16: ComfyUI keeps its models
    assert comfy.frees == []
    assert chat(ark, "thinker:20b").status_code == 200  # large: ComfyUI is freed first, then the coder goes
    assert comfy.frees == [{"unload_models": True, "free_memory": True}] and comfy.models == 0
    assert set(fake_ollama.loaded) == {"thinker:20b"}
    assert wait_until(lambda: status(ark)["comfyui"]["used_bytes"] == 3 * GIB // 4, 5)


def test_ark_gpu_free_comfyui_waits_for_the_memory(ark: ArkProcess, comfy: FakeComfyUI) -> None:
    freed = subprocess.run(
        [sys.executable, "-m", "ark", "gpu", "free-comfyui", "--config", str(ark.config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "ARK_DATA_DIR": str(ark.data_dir)},
    )
    assert freed.returncode == 0, freed.stderr
    assert "ComfyUI: 4.00 GB freed (4.75 -> 0.75 GB)" in freed.stdout
    assert comfy.models == 0 and len(comfy.frees) == 1


def test_a_memory_hold_keeps_memory_until_it_is_given_back(
    ark: ArkProcess, fake_ollama: FakeOllama, comfy: FakeComfyUI
) -> None:
    comfy.models = 0
    assert wait_until(lambda: status(ark)["comfyui"]["used_bytes"] == 3 * GIB // 4, 5)
    granted = httpx.post(
        ark.url + "/admin/gpu/holds",
        headers=MASTER,
        json={"holder": "blender", "memory_gb": 6, "priority": "high", "max_seconds": 300},
        timeout=30,
    )
    assert granted.status_code == 200, granted.text
    hold = granted.json()
    assert hold["holder"] == "blender" and hold["memory_bytes"] == 6 * GIB and hold["granted"]
    assert 299 < hold["expires_in_s"] <= 300
    shown = status(ark)
    assert shown["held_bytes"] == 6 * GIB and [entry["id"] for entry in shown["holds"]] == [hold["id"]]
    assert shown["leases"] == shown["holds"]  # the deprecated key, the same list
    assert ark.metric("ark_gpu_memory_bytes", gpu="0", kind="holds") == 6 * GIB
    assert ark.metric("ark_gpu_memory_bytes", gpu="0", kind="leases") == 6 * GIB  # the deprecated label
    shown_cli = subprocess.run(
        [sys.executable, "-m", "ark", "gpu", "status", "--config", str(ark.config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "ARK_DATA_DIR": str(ark.data_dir)},
    )
    assert shown_cli.returncode == 0, shown_cli.stderr
    assert "holds 6.0" in shown_cli.stdout  # the bar's legend
    assert hold["id"] in shown_cli.stdout and "blender" in shown_cli.stdout and "6.00 GB" in shown_cli.stdout

    answers: list[httpx.Response] = []
    waiting = threading.Thread(target=lambda: answers.append(chat(ark, "thinker:20b")))
    waiting.start()  # 11.4 GB does not fit beside 0.75 + 6: the thinker waits for the render
    assert wait_until(lambda: status(ark)["queue"] == 1, 10)
    assert not answers and fake_ollama.loaded == {}
    released = httpx.delete(ark.url + f"/admin/gpu/holds/{hold['id']}", headers=MASTER, timeout=5)
    assert released.status_code == 200 and released.json() == {"id": hold["id"], "released": True}
    waiting.join(30)
    assert answers and answers[0].status_code == 200
    assert set(fake_ollama.loaded) == {"thinker:20b"} and status(ark)["held_bytes"] == 0
    gone = httpx.delete(ark.url + f"/admin/gpu/holds/{hold['id']}", headers=MASTER, timeout=5)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(("take", "give"), [("leases", "leases"), ("leases", "holds"), ("holds", "leases")])
def test_the_old_leases_path_is_an_alias_of_holds(ark: ArkProcess, take: str, give: str) -> None:
    granted = httpx.post(
        ark.url + f"/admin/gpu/{take}", headers=MASTER, json={"holder": "render", "memory_gb": 1}, timeout=30
    )
    assert granted.status_code == 200, granted.text
    hold = granted.json()
    assert hold["holder"] == "render" and hold["granted"]
    shown = status(ark)
    assert [h["id"] for h in shown["holds"]] == [hold["id"]] and shown["leases"] == shown["holds"]
    released = httpx.delete(ark.url + f"/admin/gpu/{give}/{hold['id']}", headers=MASTER, timeout=5)
    assert released.status_code == 200 and released.json() == {"id": hold["id"], "released": True}
    shown = status(ark)
    assert shown["holds"] == shown["leases"] == [] and shown["held_bytes"] == 0
    assert shown["stats"]["holds_granted"] == shown["stats"]["leases_granted"] == 1
    assert ark.metric("ark_gpu_holds_reclaimed_total") == ark.metric("ark_gpu_leases_reclaimed_total") == 0
    assert "ark_gpu_holds_reclaimed_total " in ark.metrics()  # served, not only absent and read as 0


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"memory_gb": 2}, "holder", "'holder' must name"),
        ({"holder": "x" * 65, "memory_gb": 2}, "holder", "'holder' must name"),
        ({"holder": "blender"}, "memory_gb", "'memory_gb' is required"),
        ({"holder": "blender", "memory_gb": "2"}, "memory_gb", "expected a number"),
        ({"holder": "blender", "memory_gb": -1}, "memory_gb", "not between"),
        ({"holder": "blender", "memory_gb": 2, "priority": "urgent"}, "priority", "'low', 'medium', 'high'"),
        ({"holder": "blender", "memory_gb": 2, "max_seconds": 0}, "max_seconds", "not between"),
        (
            {"holder": "blender", "memory_gb": 40},
            "memory_gb",
            "a memory hold for blender needs 40.0 GB, the GPU has 16.0 GB",
        ),
    ],
)
def test_bad_hold_requests_are_refused_and_nothing_is_held(
    ark: ArkProcess,
    body: dict,
    param: str,
    fragment: str,  # type: ignore[type-arg]
) -> None:
    answer = httpx.post(ark.url + "/admin/gpu/holds", headers=MASTER, json=body, timeout=10)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and fragment in error["message"]
    assert status(ark)["holds"] == [] and status(ark)["held_bytes"] == 0


@pytest.mark.parametrize("path", ["/admin/gpu/holds", "/admin/gpu/leases"])
def test_holds_are_for_the_master_key_only(ark: ArkProcess, path: str) -> None:
    body = {"holder": "blender", "memory_gb": 1}
    assert httpx.post(ark.url + path, json=body, timeout=5).status_code == 401
    wrong = {"Authorization": "Bearer sk-ark-nope"}
    assert httpx.post(ark.url + path, headers=wrong, json=body, timeout=5).status_code == 401
    assert httpx.delete(ark.url + path + "/abc", timeout=5).status_code == 401
