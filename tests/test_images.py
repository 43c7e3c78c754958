"""Images through ARK, end to end: a real `ark up` with the ComfyUI and Ollama stand-ins on a virtual GPU,
the official `openai` client's images.generate as the client. Each job's GPU memory hold is checked to end
in `GET /admin/gpu`, whatever ended the job."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
import sys
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import MASTER_KEY, ArkProcess, LoopThread, free_port, start_ark, stop_ark, wait_until
from tests.console_pages import add_user, signed_in
from tests.fakes.comfyui import FakeComfyUI
from tests.fakes.ollama import FakeOllama

GIB = 1024**3
MASTER = {"Authorization": f"Bearer {MASTER_KEY}"}
BROKEN = {  # ComfyUI's own validation refuses it: the checkpoint is not installed
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "missing.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    "3": {
        "class_type": "KSampler",
        "inputs": {
            "seed": 0,
            "steps": 4,
            "cfg": 7.0,
            "sampler_name": "euler",
            "scheduler": "normal",
            "denoise": 1.0,
            "model": ["4", 0],
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
        },
    },
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ark", "images": ["8", 0]}},
}
CONFIG = """master_key = "{key}"
[gateway]
listen = "127.0.0.1:{{PORT}}"
[gpu]
device = "virtual"
memory_gb = 16
reserve_gb = 0
comfyui_idle_gb = 0.75
[images]
comfyui_url = "{comfy}"
job_timeout_s = 3
[engines.ollama]
kind = "ollama"
url = "{ollama}"
[image_models."sdxl"]
memory_gb = 6
cost_per_image = 1.0
negative_prompt = "blurry"
[image_models."broken"]
workflow = "broken.json"
[image_models."measured"]
[image_models."timed"]
memory_gb = 1
cost_per_gpu_second = 10.0
"""


@pytest.fixture(scope="module")
def comfy(loop_thread: LoopThread) -> Iterator[FakeComfyUI]:
    fake = FakeComfyUI(vram_total=16 * GIB, idle=3 * GIB // 4, models=0)
    loop_thread.run(fake.start())
    yield fake
    loop_thread.run(fake.stop())


@pytest.fixture(scope="module")
def ollama(loop_thread: LoopThread) -> Iterator[FakeOllama]:
    fake = FakeOllama(models=("llama3.2:1b",), reply_tokens=4)
    loop_thread.run(fake.start())
    fake.add_model("thinker:20b")  # ~11.4 GiB loaded: large on a 16 GiB device
    fake.vram = 16 * GIB
    yield fake
    loop_thread.run(fake.stop())


@pytest.fixture(scope="module")
def ark(tmp_path_factory: pytest.TempPathFactory, comfy: FakeComfyUI, ollama: FakeOllama) -> Iterator[ArkProcess]:
    tmp = tmp_path_factory.mktemp("images")
    (tmp / "broken.json").write_text(json.dumps(BROKEN))
    process = start_ark(CONFIG.format(key=MASTER_KEY, comfy=comfy.url, ollama=ollama.url), tmp)
    yield process
    stop_ark(process)


@pytest.fixture(autouse=True)
def fresh(comfy: FakeComfyUI, loop_thread: LoopThread) -> Iterator[None]:
    comfy.hang, comfy.fail_node_class, comfy.step_delay, comfy.padding = False, None, 0.001, 0
    yield
    comfy.hang = False


def generate(ark: ArkProcess, **request: Any) -> Any:
    """The official client's images.generate (closed after: no connection left to the garbage collector)."""
    with openai.OpenAI(base_url=ark.api, api_key=MASTER_KEY, max_retries=0, timeout=30) as client:
        return client.images.generate(**request)


def models(ark: ArkProcess) -> dict[str, dict[str, Any]]:
    with openai.OpenAI(base_url=ark.api, api_key=MASTER_KEY, max_retries=0, timeout=30) as client:
        return {m.id: m.model_dump() for m in client.models.list().data}


def gpu(ark: ArkProcess) -> dict[str, Any]:
    return httpx.get(ark.url + "/admin/gpu", headers=MASTER, timeout=5).json()  # type: ignore[no-any-return]


def holds_end(ark: ArkProcess) -> bool:
    return wait_until(lambda: gpu(ark)["holds"] == [], 10)


def png_text(data: bytes) -> dict[str, str]:
    """The tEXt chunks of a PNG (the stand-in writes what the job was made with into "parameters")."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, at = {}, 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        assert struct.unpack(">I", data[at + 8 + length : at + 12 + length])[0] == zlib.crc32(kind + body)
        if kind == b"tEXt":
            name, _, value = body.partition(b"\0")
            out[name.decode()] = value.decode()
        at += 12 + length
    return out


def test_b64_images_from_the_openai_client_run_the_template_and_end_their_hold(
    ark: ArkProcess, comfy: FakeComfyUI
) -> None:
    jobs = len(comfy.jobs)
    result = generate(
        ark,
        model="sdxl",
        prompt="a lighthouse at dusk",
        n=2,
        size="512x768",
        response_format="b64_json",
        extra_body={"seed": 7},
    )
    assert len(result.data) == 2 and result.created > 0
    made = [json.loads(png_text(base64.b64decode(d.b64_json or ""))["parameters"]) for d in result.data]
    assert [(m["width"], m["height"], m["positive"], m["negative"], m["seed"]) for m in made] == [
        (512, 768, "a lighthouse at dusk", "blurry", 7)
    ] * 2
    assert [m["batch_index"] for m in made] == [0, 1]  # one job, batch_size 2
    assert len(comfy.jobs) == jobs + 1
    assert holds_end(ark)
    assert ark.metric("ark_images_generated_total", model="sdxl") >= 2
    assert "\nark_image_queue_depth 0.0\n" in ark.metrics()  # nothing waits once it is answered
    assert ark.metric("ark_image_job_seconds_count", model="sdxl") >= 1
    listed = models(ark)
    assert listed["sdxl"]["kind"] == "image" and listed["llama3.2:1b"]["kind"] == "text"


def test_url_images_are_served_by_signed_url_only(ark: ArkProcess, comfy: FakeComfyUI) -> None:
    comfy.padding = 3 * 1024**2  # a real image is megabytes: fetched from ComfyUI whole
    result = generate(ark, model="sdxl", prompt="a red fox", size="256x256")  # url: OpenAI's default
    url = result.data[0].url or ""
    assert url.startswith(ark.url + "/v1/images/files/") and "expires=" in url and "sig=" in url
    served = httpx.get(url, timeout=5)  # no key: the signature is the grant
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert len(served.content) > 3 * 1024**2 and len(png_text(served.content)["padding"]) == 3 * 1024**2
    assert json.loads(png_text(served.content)["parameters"])["positive"] == "a red fox"
    forged = url[:-4] + ("0000" if not url.endswith("0000") else "1111")
    refused = httpx.get(forged, timeout=5)
    assert refused.status_code == 403 and refused.json()["error"]["message"]
    name = url.split("/files/")[1].split("?")[0]
    for trick in ("..%2F..%2Fark.db", "../ark.db", name.upper(), name + "%00.png", ""):
        answer = httpx.get(f"{ark.url}/v1/images/files/{trick}?{url.split('?')[1]}", timeout=5)
        assert answer.status_code in (403, 404), trick
    for query in ("expires=%C2%B2&sig=00", f"{url.split('?')[1].split('&')[0]}&sig=%C3%A9", "", "expires=&sig="):
        answer = httpx.get(f"{ark.url}/v1/images/files/{name}?{query}", timeout=5)
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "image_url_refused", query


def test_a_workflow_comfyui_refuses_is_a_400_naming_node_and_input(ark: ArkProcess) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        generate(ark, model="broken", prompt="x", response_format="b64_json")
    message = refused.value.body["message"]  # type: ignore[index]
    assert "node 4 (CheckpointLoaderSimple)" in message and "ckpt_name" in message, message
    assert refused.value.code == "workflow_rejected"
    assert holds_end(ark)


def test_bad_requests_are_openai_400s(ark: ArkProcess) -> None:
    for body, param in (
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "n": 99}, "n"),
        ({"prompt": "x", "n": True}, "n"),
        ({"prompt": "x", "size": "1000x1001"}, "size"),
        ({"prompt": "x", "size": "99999x64"}, "size"),
        ({"prompt": "x", "response_format": "jpeg"}, "response_format"),
        ({"prompt": "x", "quality": "ultra"}, "quality"),
        ({"prompt": "x", "model": ["sdxl"]}, "model"),
    ):
        answer = httpx.post(ark.api + "/images/generations", headers=MASTER, json=body, timeout=10)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param, (body, answer.text)
    unknown = httpx.post(ark.api + "/images/generations", headers=MASTER, json={"prompt": "x", "model": "dall-e-9"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


def test_a_failing_node_is_a_502_that_names_it(ark: ArkProcess, comfy: FakeComfyUI) -> None:
    comfy.fail_node_class = "VAEDecode"
    with pytest.raises(openai.APIStatusError) as failed:
        generate(ark, model="sdxl", prompt="x", response_format="b64_json")
    assert failed.value.status_code == 502 and "VAEDecode" in str(failed.value.body)
    assert holds_end(ark)
    assert ark.metric("ark_image_failures_total", model="sdxl", reason="node_error") >= 1


def test_a_hung_job_is_interrupted_at_its_timeout(ark: ArkProcess, comfy: FakeComfyUI) -> None:
    comfy.hang = True
    interrupts = comfy.interrupts
    with pytest.raises(openai.APIStatusError) as late:
        generate(ark, model="sdxl", prompt="x", response_format="b64_json")
    assert late.value.status_code == 504
    assert comfy.interrupts == interrupts + 1
    assert holds_end(ark)
    assert wait_until(lambda: not comfy.busy, 5)  # ComfyUI is free for the next job


def test_a_client_that_leaves_mid_job_cancels_it(ark: ArkProcess, comfy: FakeComfyUI) -> None:
    comfy.hang = True
    interrupts = comfy.interrupts
    body = json.dumps({"prompt": "x"}).encode()
    host, port = ark.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as client:
        client.sendall(
            b"POST /v1/images/generations HTTP/1.1\r\nHost: ark\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {MASTER_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert wait_until(lambda: comfy.busy, 10)  # the job runs on ComfyUI: now the client goes
    assert wait_until(lambda: comfy.interrupts == interrupts + 1, 10)
    assert holds_end(ark)
    assert wait_until(lambda: ark.metric("ark_image_failures_total", model="sdxl", reason="cancelled") >= 1, 5)


def test_comfyui_killed_mid_job_is_a_502_and_the_hold_ends(
    tmp_path: Path, loop_thread: LoopThread, ollama: FakeOllama
) -> None:
    doomed = FakeComfyUI(vram_total=16 * GIB, idle=3 * GIB // 4, models=0)
    loop_thread.run(doomed.start())
    doomed.hang = True
    (tmp_path / "broken.json").write_text(json.dumps(BROKEN))
    ark = start_ark(CONFIG.format(key=MASTER_KEY, comfy=doomed.url, ollama=ollama.url), tmp_path)
    try:
        answer: list[httpx.Response] = []
        asking = threading.Thread(
            target=lambda: answer.append(
                httpx.post(ark.api + "/images/generations", headers=MASTER, json={"prompt": "x"}, timeout=30)
            )
        )
        asking.start()
        assert wait_until(lambda: doomed.busy, 10)
        loop_thread.run(doomed.die())
        asking.join(30)
        assert answer and answer[0].status_code == 502, answer and answer[0].text
        assert answer[0].json()["error"]["code"] == "comfyui_unavailable"
        assert holds_end(ark)
    finally:
        stop_ark(ark)
        loop_thread.run(doomed.stop())


def test_a_large_model_waits_for_an_image_job_and_comfyui_is_freed_after(
    ark: ArkProcess, comfy: FakeComfyUI, ollama: FakeOllama
) -> None:
    """6 GB held for the job, 0.75 GB ComfyUI's own, 11.4 GB for the large model: more than 16 together."""
    comfy.hang = True
    image: list[httpx.Response] = []
    chat: list[httpx.Response] = []
    body = {"prompt": "x", "response_format": "b64_json"}
    threading.Thread(
        target=lambda: image.append(httpx.post(ark.api + "/images/generations", headers=MASTER, json=body, timeout=30))
    ).start()
    assert wait_until(lambda: comfy.busy and len(gpu(ark)["holds"]) == 1, 10)
    question = {"model": "thinker:20b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    asking = threading.Thread(
        target=lambda: chat.append(httpx.post(ark.api + "/chat/completions", headers=MASTER, json=question, timeout=30))
    )
    asking.start()
    assert wait_until(lambda: gpu(ark)["queue"] == 1, 10)  # the large model waits for the memory held
    assert "thinker:20b" not in ollama.loaded and not chat
    httpx.post(comfy.url + "/interrupt", json={}, timeout=5)  # the job ends (interrupted on ComfyUI's side)
    asking.join(30)
    assert chat and chat[0].status_code == 200, chat and chat[0].text
    assert image and image[0].status_code == 502 and image[0].json()["error"]["code"] == "image_job_interrupted"
    assert {"unload_models": True, "free_memory": True} in comfy.frees  # its cached model went for the large one
    assert "thinker:20b" in ollama.loaded and gpu(ark)["holds"] == []


def test_twenty_requests_on_a_budget_of_five_images_get_exactly_five(ark: ArkProcess, comfy: FakeComfyUI) -> None:
    made = httpx.post(ark.url + "/key/generate", headers=MASTER, json={"key_alias": "five", "max_budget": 5.0}).json()
    headers = {"Authorization": f"Bearer {made['key']}"}
    body = {"model": "sdxl", "prompt": "x", "size": "1024x1024", "response_format": "b64_json"}  # 1 credit each

    async def storm() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60, headers=headers) as http:
            return list(
                await asyncio.gather(*(http.post(ark.api + "/images/generations", json=body) for _ in range(20)))
            )

    answers = asyncio.run(storm())
    assert sorted(r.status_code for r in answers) == [200] * 5 + [429] * 15
    assert {r.json()["error"]["code"] for r in answers if r.status_code == 429} == {"insufficient_quota"}

    def spend() -> float:
        info = httpx.get(ark.url + "/key/info", headers=MASTER, params={"key": made["key"]}, timeout=5).json()
        return float(info["info"]["spend"])

    assert wait_until(lambda: spend() == 5.0, 10), spend()
    logs = httpx.get(ark.url + "/spend/logs", headers=MASTER, params={"api_key": made["key"]}, timeout=5).json()
    served = [row for row in logs if row["status"] == 200]
    assert len(served) == 5 and {(row["kind"], row["images"], row["spend"]) for row in served} == {("image", 1, 1.0)}


def test_a_model_without_memory_gb_holds_what_comfyui_was_seen_to_take(ark: ArkProcess, comfy: FakeComfyUI) -> None:
    def held_while_hung() -> int:
        comfy.hang = True
        answer: list[httpx.Response] = []
        body = {"model": "measured", "prompt": "x", "response_format": "b64_json"}
        asking = threading.Thread(
            target=lambda: answer.append(httpx.post(ark.api + "/images/generations", headers=MASTER, json=body))
        )
        asking.start()
        assert wait_until(lambda: comfy.busy and len(gpu(ark)["holds"]) == 1, 10)
        hold = gpu(ark)["holds"][0]
        httpx.post(comfy.url + "/interrupt", json={}, timeout=5)
        asking.join(30)
        comfy.hang = False
        assert hold["in_comfyui"] and hold["priority"] == "low"
        return int(hold["memory_bytes"])

    comfy.job_memory = 5 * GIB
    assert held_while_hung() == 8 * GIB  # [images] memory_gb until a job has been measured
    httpx.post(comfy.url + "/free", json={"unload_models": True}, timeout=5)  # no checkpoint loaded
    assert wait_until(lambda: comfy.models == 0, 10)
    assert generate(ark, model="measured", prompt="x", response_format="b64_json").data
    assert held_while_hung() == 5 * GIB  # what ComfyUI's allocator grew by while that job loaded its checkpoint


def test_ark_up_runs_comfyui_from_comfyui_path_and_stops_it(tmp_path: Path, ollama: FakeOllama) -> None:
    """An installed ComfyUI is a folder with main.py: here one whose main.py starts the stand-in."""
    folder = tmp_path / "ComfyUI"
    folder.mkdir()
    root = Path(__file__).resolve().parent.parent
    (folder / "main.py").write_text(
        f"import sys\nsys.path.insert(0, {str(root)!r})\nfrom tests.fakes.comfyui import main\nmain()\n"
    )
    port = free_port()
    config = CONFIG.format(key=MASTER_KEY, comfy="", ollama=ollama.url).replace(
        'comfyui_url = ""',
        f'comfyui_path = "{folder}"\ncomfyui_python = "{sys.executable}"\ncomfyui_listen = "127.0.0.1:{port}"',
    )
    (tmp_path / "broken.json").write_text(json.dumps(BROKEN))
    ark = start_ark(config, tmp_path)
    try:

        def comfyui_state() -> str:
            listed = httpx.get(ark.url + "/admin/services", headers=MASTER, timeout=5).json()["services"]
            return next((s["state"] for s in listed if s["name"] == "comfyui"), "missing")

        assert wait_until(lambda: comfyui_state() == "running", 30), comfyui_state()
        made = generate(ark, model="sdxl", prompt="a kestrel", response_format="b64_json")
        assert json.loads(png_text(base64.b64decode(made.data[0].b64_json))["parameters"])["positive"] == "a kestrel"
        assert wait_until(lambda: gpu(ark)["comfyui"] is not None, 10)  # the arbiter watches the same ComfyUI
        assert (ark.data_dir / "logs" / "comfyui.log").exists()
    finally:
        stop_ark(ark)
    with pytest.raises(httpx.ConnectError):  # ARK's ComfyUI went with it
        httpx.get(f"http://127.0.0.1:{port}/system_stats", timeout=2)


def test_gpu_seconds_are_charged_as_comfyui_ran_the_job(ark: ArkProcess, comfy: FakeComfyUI) -> None:
    comfy.step_delay = 0.01  # 30 steps: about 0.3 s of sampling
    made = httpx.post(ark.url + "/key/generate", headers=MASTER, json={"key_alias": "timed"}).json()
    headers = {"Authorization": f"Bearer {made['key']}"}
    body = {"model": "timed", "prompt": "x", "response_format": "b64_json"}
    answer = httpx.post(ark.api + "/images/generations", headers=headers, json=body, timeout=30)
    assert answer.status_code == 200
    logs: list[dict[str, Any]] = []

    def logged() -> bool:
        nonlocal logs
        logs = httpx.get(ark.url + "/spend/logs", headers=MASTER, params={"api_key": made["key"]}, timeout=5).json()
        return bool(logs)

    assert wait_until(logged, 10)
    seconds = logs[0]["spend"] / 10.0  # from ComfyUI's own execution_start and execution_success stamps
    assert 0.3 <= seconds <= logs[0]["request_duration_ms"] / 1000, logs[0]


def test_image_jobs_run_one_at_a_time_each_under_its_own_hold(ark: ArkProcess, comfy: FakeComfyUI) -> None:
    """ComfyUI runs one job at a time: a second request waits without holding GPU memory for nothing."""
    comfy.hang = True
    answers: list[httpx.Response] = []
    body = {"prompt": "x", "response_format": "b64_json"}
    askers = [
        threading.Thread(
            target=lambda: answers.append(
                httpx.post(ark.api + "/images/generations", headers=MASTER, json=body, timeout=30)
            )
        )
        for _ in range(2)
    ]
    for asker in askers:
        asker.start()
    assert wait_until(lambda: comfy.busy and ark.metric("ark_image_queue_depth") == 2, 10)
    assert len(gpu(ark)["holds"]) == 1
    assert httpx.get(comfy.url + "/queue", timeout=5).json()["queue_pending"] == []  # the second is not sent yet
    comfy.hang = False
    httpx.post(comfy.url + "/interrupt", json={}, timeout=5)  # the first ends; the second then runs through
    for asker in askers:
        asker.join(30)
    assert sorted(a.status_code for a in answers) == [200, 502]
    assert holds_end(ark)


def test_the_playground_draws_with_an_image_model(ark: ArkProcess, chromium: Any, tmp_path: Path) -> None:
    """The console's playground lists image models beside chat models and draws with them, as the person."""
    playwright = pytest.importorskip("playwright.sync_api")
    expect = playwright.expect
    add_user(ark, "ivy")
    with signed_in(chromium, ark, "ivy", "/playground") as page:
        expect(page.locator("#pg-model optgroup[label=Images] option[value=sdxl]")).to_have_count(1)
        expect(page.locator("#pg-model optgroup[label=Chat] option[value='llama3.2:1b']")).to_have_count(1)
        page.select_option("#pg-model", "sdxl")
        expect(page.locator("#pg-size")).to_be_visible()
        expect(page.locator("#pg-temperature")).to_be_hidden()  # a sampler's settings are the template's
        page.select_option("#pg-size", "512x512")
        page.fill("#pg-prompt", "a lighthouse at dusk")
        page.click("#pg-send")
        expect(page.locator("#pg-numbers")).to_have_attribute("data-ready", "yes", timeout=30000)
        picture = page.locator("#pg-chat .msg.assistant img")
        expect(picture).to_have_count(1)
        assert (picture.get_attribute("src") or "").startswith("data:image/png;base64,")
        box = picture.bounding_box()
        assert box is not None and box["width"] > 50  # it decoded: a broken image has no size
        assert page.get_attribute("#pg-status", "data-value") == "200"
        assert '"size": "512x512"' in page.inner_text("#pg-request")
        page.click("#pg-inspector button[data-kind=openai]")
        assert "client.images.generate(" in page.inner_text("#pg-code")
        assert not page.errors, page.errors

    def charged() -> bool:  # to ivy, as an image
        rows = httpx.get(ark.url + "/spend/logs", headers=MASTER, params={"user": "ivy"}, timeout=5).json()
        return any(r["kind"] == "image" and r["images"] == 1 for r in rows)

    assert wait_until(charged, 10)
