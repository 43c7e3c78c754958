"""The ComfyUI stand-in keeps to ComfyUI's API: a job's messages in order, validation's 400s, interrupts,
the queue, history and /view, and a ComfyUI that dies under its clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from tests.fakes.comfyui import GIB, FakeComfyUI

CHECKPOINT = "sd_xl_base_1.0.safetensors"
Message = tuple[str, dict[str, Any]]


def graph(*, steps: int = 2, batch_size: int = 1, seed: int = 42, ckpt: str = CHECKPOINT) -> dict[str, Any]:
    """The usual text-to-image graph in API format."""
    sampler = {"seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 768, "batch_size": batch_size}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                **sampler,
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ark/fox"}},
    }


@contextlib.asynccontextmanager
async def comfyui(**controls: Any) -> AsyncIterator[tuple[FakeComfyUI, aiohttp.ClientSession]]:
    comfy = FakeComfyUI(models=0)
    for name, value in controls.items():
        setattr(comfy, name, value)
    await comfy.start()
    try:
        async with aiohttp.ClientSession(comfy.url) as http:
            yield comfy, http
    finally:
        await comfy.stop()


async def post(http: aiohttp.ClientSession, path: str, body: Any) -> tuple[int, Any]:
    async with http.post(path, json=body) as reply:
        return reply.status, (await reply.json() if reply.content_type == "application/json" else None)


async def get(http: aiohttp.ClientSession, path: str, **params: str) -> Any:
    async with http.get(path, params=params) as reply:
        assert reply.status == 200
        return await reply.json()


async def follow(
    ws: aiohttp.ClientWebSocketResponse, until: Callable[[str, dict[str, Any]], bool]
) -> tuple[list[Message], list[bytes]]:
    """The messages up to and with the one ``until`` accepts, and the binary frames among them."""
    seen: list[Message] = []
    frames: list[bytes] = []
    async with asyncio.timeout(5):
        async for frame in ws:
            if frame.type == aiohttp.WSMsgType.BINARY:
                frames.append(frame.data)
                continue
            message = json.loads(frame.data)
            seen.append((message["type"], message["data"]))
            if until(message["type"], message["data"]):
                return seen, frames
    raise AssertionError(f"the websocket closed after {seen}")


def job_over(prompt_id: str) -> Callable[[str, dict[str, Any]], bool]:
    return lambda kind, data: kind == "executing" and data == {"node": None, "prompt_id": prompt_id}


def png_info(data: bytes) -> tuple[tuple[int, int], dict[str, str]]:
    """A PNG's size and text, each chunk's CRC and the pixel data checked."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, size, text, pixels = 8, (0, 0), {}, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body, (crc,) = data[pos + 8 : pos + 8 + length], struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"tEXt":
            key, value = body.split(b"\0", 1)
            text[key.decode()] = value.decode("latin-1")
        elif kind == b"IDAT":
            pixels += body
        pos += 12 + length
    assert kind == b"IEND" and len(zlib.decompress(pixels)) == size[1] * (1 + 3 * size[0])
    return size, text


def test_a_job_sends_comfyuis_messages_in_order_and_its_images_come_back() -> None:
    async def main() -> None:
        async with comfyui(job_memory=5 * GIB) as (comfy, http):
            async with http.ws_connect("/ws", params={"clientId": "ark-1"}) as ws:
                hello = await ws.receive_json()
                assert hello == {
                    "type": "status",
                    "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "ark-1"},
                }
                status, reply = await post(
                    http, "/prompt", {"prompt": graph(batch_size=2, seed=7), "client_id": "ark-1"}
                )
                prompt_id = reply["prompt_id"]
                assert status == 200 and reply == {"prompt_id": prompt_id, "number": 0, "node_errors": {}}
                texts, previews = await follow(ws, job_over(prompt_id))
            assert [(kind, data.get("node")) for kind, data in texts if kind != "progress_state"] == [
                ("status", None),  # queued
                ("status", None),  # taken from the queue
                ("execution_start", None),
                ("execution_cached", None),
                *[("executing", node) for node in ("4", "6", "7", "5", "3")],
                ("progress", "3"),
                ("progress", "3"),
                ("executing", "8"),
                ("executing", "9"),
                ("executed", "9"),
                ("execution_success", None),
                ("status", None),
                ("executing", None),
            ]
            assert [d["status"]["exec_info"]["queue_remaining"] for k, d in texts if k == "status"] == [1, 1, 0]
            assert [(d["value"], d["max"]) for k, d in texts if k == "progress"] == [(1, 2), (2, 2)]
            assert len(previews) == 1 and previews[0][:8] == struct.pack(">II", 1, 2) and png_info(previews[0][8:])
            states = [d["nodes"] for k, d in texts if k == "progress_state"]
            assert {n: s["state"] for n, s in states[-1].items()} == dict.fromkeys("4675389", "finished")
            images = next(d["output"]["images"] for k, d in texts if k == "executed")
            assert images == [{"filename": f"fox_0000{i}_.png", "subfolder": "ark", "type": "output"} for i in (1, 2)]

            history = (await get(http, f"/history/{prompt_id}"))[prompt_id]
            assert history["outputs"] == {"9": {"images": images}} and history["prompt"][1:3] == [
                prompt_id,
                graph(batch_size=2, seed=7),
            ]
            assert history["prompt"][3]["client_id"] == "ark-1" and history["prompt"][4] == ["9"]
            assert history["status"]["status_str"] == "success" and history["status"]["completed"] is True
            assert [m[0] for m in history["status"]["messages"]] == [
                "execution_start",
                "execution_cached",
                "execution_success",
            ]
            assert await get(http, "/history") == {prompt_id: history}
            for index, image in enumerate(images):
                async with http.get("/api/view", params=image) as reply:
                    assert reply.status == 200 and reply.content_type == "image/png"
                    size, text = png_info(await reply.read())
                assert size == (42, 64)  # 512 x 768, a side at most 64 pixels
                made = json.loads(text["parameters"])
                assert (made["width"], made["height"], made["seed"], made["batch_index"]) == (512, 768, 7, index)
                assert (made["positive"], made["negative"], made["ckpt_name"]) == ("a red fox", "blurry", CHECKPOINT)
                assert json.loads(text["prompt"]) == graph(batch_size=2, seed=7)
            assert comfy.peak_models == 5 * GIB and not comfy.busy  # the checkpoint stays loaded after the job
            stats = await get(http, "/system_stats")
            assert stats["devices"][0]["torch_vram_total"] == 5 * GIB
            assert comfy.jobs == [graph(batch_size=2, seed=7)]

    asyncio.run(main())


def test_validation_refuses_as_comfyui_does_naming_the_node_and_input() -> None:
    async def main() -> None:
        async with comfyui() as (comfy, http):
            status, body = await post(http, "/prompt", {"prompt": graph(ckpt="nope.safetensors", steps=20000)})
            assert status == 400
            assert body["error"] == {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": "",
                "extra_info": {},
            }
            assert body["node_errors"]["4"] == {
                "errors": [
                    {
                        "type": "value_not_in_list",
                        "message": "Value not in list",
                        "details": f"ckpt_name: 'nope.safetensors' not in {[CHECKPOINT]}",
                        "extra_info": {
                            "input_name": "ckpt_name",
                            "input_config": [[CHECKPOINT], {}],
                            "received_value": "nope.safetensors",
                        },
                    }
                ],
                "dependent_outputs": ["9"],
                "class_type": "CheckpointLoaderSimple",
            }
            (steps,) = body["node_errors"]["3"]["errors"]
            assert steps["type"] == "value_bigger_than_max" and steps["extra_info"]["input_name"] == "steps"
            assert steps["message"] == "Value 20000 bigger than max of 10000" and set(body["node_errors"]) == {"3", "4"}

            unnamed = graph()
            del unnamed["9"]["inputs"]["filename_prefix"]
            status, body = await post(http, "/prompt", {"prompt": unnamed})
            assert status == 400 and body["error"]["details"] == "Required input is missing: filename_prefix"
            assert body["node_errors"]["9"]["errors"][0]["type"] == "required_input_missing"

            unknown = graph() | {"10": {"class_type": "UltimateSDUpscale", "inputs": {}}}
            status, body = await post(http, "/prompt", {"prompt": unknown})
            assert (status, body["error"]["type"], body["error"]["extra_info"]["node_id"]) == (
                400,
                "missing_node_type",
                "10",
            )
            status, body = await post(http, "/prompt", {"prompt": {"4": graph()["4"]}})
            assert (status, body["error"]["type"], body["node_errors"]) == (400, "prompt_no_outputs", {})
            status, body = await post(http, "/prompt", {"client_id": "ark"})
            assert (status, body["error"]["type"], body["node_errors"]) == (400, "no_prompt", {})
            status, body = await post(http, "/prompt", {"prompt": graph(), "prompt_id": "job-1"})
            assert (status, body["error"]["type"]) == (400, "invalid_prompt_id")
            async with http.post("/prompt", data="{") as reply:
                assert reply.status == 500  # ComfyUI does not catch bad JSON either

            # one good output is enough: it runs, and the bad one is reported beside it
            mixed = graph() | {"10": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}
            status, body = await post(http, "/prompt", {"prompt": mixed})
            assert status == 200 and body["node_errors"]["10"]["errors"][0]["type"] == "return_type_mismatch"
            assert body["number"] == 6 and len(comfy.jobs) == 6  # bad JSON is not counted, no prompt is not kept

    asyncio.run(main())


def test_an_interrupt_ends_a_hung_job_and_the_queue_can_be_emptied() -> None:
    async def main() -> None:
        async with comfyui(hang=True, free_delay=0.01) as (comfy, http):
            async with http.ws_connect("/ws", params={"clientId": "ark"}) as ws:
                await ws.receive_json()
                ids = []
                for seed in range(3):
                    ids.append(
                        (await post(http, "/prompt", {"prompt": graph(seed=seed), "client_id": "ark"}))[1]["prompt_id"]
                    )
                await follow(ws, lambda kind, data: kind == "progress")  # the last step is the one that hangs
                queue = await get(http, "/queue")
                assert [i[1] for i in queue["queue_running"]] == ids[:1] and [
                    i[1] for i in queue["queue_pending"]
                ] == ids[1:]
                assert await get(http, "/prompt") == {"exec_info": {"queue_remaining": 3}}
                assert (await post(http, "/queue", {"delete": [ids[1]]}))[0] == 200
                assert [i[1] for i in (await get(http, "/queue"))["queue_pending"]] == ids[2:]
                await post(http, "/queue", {"clear": True})
                await post(http, "/interrupt", {"prompt_id": str(uuid.uuid4())})  # not the running one: ignored
                await post(http, "/free", {"unload_models": True})  # waits for the job
                assert [i[1] for i in (await get(http, "/queue"))["queue_running"]] == ids[
                    :1
                ] and comfy.models == 6 * GIB
                await post(http, "/interrupt", {"prompt_id": ids[0]})
                seen, _ = await follow(ws, job_over(ids[0]))
            ended = [data for kind, data in seen if kind.startswith("execution_")]
            assert len(ended) == 1 and ended[0].pop("timestamp")
            assert ended == [
                {"prompt_id": ids[0], "node_id": "3", "node_type": "KSampler", "executed": ["4", "6", "7", "5"]}
            ]
            status = (await get(http, f"/history/{ids[0]}"))[ids[0]]["status"]
            assert (status["status_str"], status["completed"], status["messages"][-1][0]) == (
                "error",
                False,
                "execution_interrupted",
            )
            assert await get(http, f"/history/{ids[1]}") == {} and comfy.interrupts == 2
            for _ in range(250):  # the worker unloads once the job has ended
                if (await get(http, "/system_stats"))["devices"][0]["torch_vram_total"] == 0:
                    break
                await asyncio.sleep(0.02)
            assert comfy.models == 0

    asyncio.run(main())


def test_a_failing_node_is_an_execution_error_and_a_stray_interrupt_is_lost() -> None:
    async def main() -> None:
        async with comfyui(fail_node_class="VAEDecode") as (comfy, http):
            assert (await post(http, "/interrupt", None))[0] == 200  # nothing runs: the next job clears it
            async with http.ws_connect("/ws") as ws:
                sid = (await ws.receive_json())["data"]["sid"]
                prompt_id = (await post(http, "/prompt", {"prompt": graph(), "client_id": sid}))[1]["prompt_id"]
                seen, _ = await follow(ws, job_over(prompt_id))
                error = next(data for kind, data in seen if kind == "execution_error")
                assert (error["node_id"], error["node_type"], error["executed"]) == (
                    "8",
                    "VAEDecode",
                    ["4", "6", "7", "5", "3"],
                )
                assert error["exception_type"] == "RuntimeError" and error["exception_message"].startswith(
                    "VAEDecode failed"
                )
                assert error["traceback"] and set(error["current_inputs"]) == {"samples", "vae"}
                assert sorted(error["current_outputs"]) == sorted(graph()) and "timestamp" in error
                history = (await get(http, f"/history/{prompt_id}"))[prompt_id]
                assert history["status"]["status_str"] == "error" and history["outputs"] == {}

                comfy.fail_node_class = None
                preview = graph() | {"9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}}
                prompt_id = (await post(http, "/prompt", {"prompt": preview, "client_id": sid}))[1]["prompt_id"]
                await follow(ws, job_over(prompt_id))
            (image,) = (await get(http, f"/history/{prompt_id}"))[prompt_id]["outputs"]["9"]["images"]
            assert image["type"] == "temp" and image["filename"].startswith("ComfyUI_temp_")
            async with http.get("/view", params=image) as reply:
                assert reply.status == 200

    asyncio.run(main())


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({}, 404),
        ({"filename": "../../comfyui.db"}, 400),
        ({"filename": "/etc/passwd"}, 400),
        ({"filename": "fox_00001_.png", "type": "models"}, 400),
        ({"filename": "fox_00001_.png", "subfolder": "../../etc"}, 403),
        ({"filename": "fox_00001_.png", "subfolder": "/etc"}, 403),
        ({"filename": "fox_00001_.png", "subfolder": "ark"}, 404),  # no job has made it
    ],
)
def test_view_refuses_paths_out_of_its_directories(params: dict[str, str], status: int) -> None:
    async def main() -> None:
        async with comfyui() as (_, http), http.get("/view", params=params) as reply:
            assert reply.status == status

    asyncio.run(main())


def test_a_dying_comfyui_cuts_its_websockets_and_stops_listening() -> None:
    async def main() -> None:
        async with comfyui(hang=True) as (comfy, http):
            async with http.ws_connect("/ws") as ws:
                await ws.receive_json()
                await post(http, "/prompt", {"prompt": graph()})
                await comfy.die()
                async with asyncio.timeout(5):
                    async for _ in ws:  # what was sent before it died still arrives
                        pass
                assert ws.closed and ws.close_code == aiohttp.WSCloseCode.ABNORMAL_CLOSURE
            with pytest.raises(aiohttp.ClientConnectionError):
                await get(http, "/prompt")

    asyncio.run(main())
