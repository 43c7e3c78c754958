"""The gateway routes through the arbiter: a model is resident before a request reaches Ollama, and a
model serving a request is never unloaded under it (a real `ark up` against the Ollama stand-in)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from ark.gateway.router import _MISS_REFRESH_INTERVAL_S
from tests.conftest import MASTER_KEY, ArkProcess, start_ark, stop_ark, wait_until
from tests.fakes.ollama import FakeOllama

GIB = 1024**3
CONFIG = """master_key = "{key}"
[gateway]
listen = "127.0.0.1:{{PORT}}"
[gpu]
device = "virtual"
memory_gb = 16
reserve_gb = 0
[engines.ollama]
kind = "ollama"
url = "{url}"
"""


@pytest.fixture
def ark(tmp_path: object, fake_ollama: FakeOllama) -> Iterator[ArkProcess]:
    fake_ollama.add_model("thinker:20b")  # ~11.4 GiB loaded: large on a 16 GiB device
    fake_ollama.add_model("coder:12b")  # ~6.8 GiB: the two do not fit together
    fake_ollama.vram = 16 * GIB
    fake_ollama.unload_delay = 0.2
    process = start_ark(CONFIG.format(key=MASTER_KEY, url=fake_ollama.url), tmp_path)  # type: ignore[arg-type]
    yield process
    stop_ark(process)


def chat(ark: ArkProcess, model: str, *, stream: bool = False) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "stream": stream}
    return httpx.post(
        ark.api + "/chat/completions", headers={"Authorization": f"Bearer {MASTER_KEY}"}, json=body, timeout=30
    )


def test_models_are_swapped_by_the_arbiter_not_by_ollama(ark: ArkProcess, fake_ollama: FakeOllama) -> None:
    assert chat(ark, "coder:12b").status_code == 200
    assert set(fake_ollama.loaded) == {"coder:12b"}
    _, body = fake_ollama.requests[-1]
    assert body["keep_alive"] == -1  # Ollama's own timer never unloads what the arbiter counts on
    assert chat(ark, "thinker:20b").status_code == 200
    assert set(fake_ollama.loaded) == {"thinker:20b"}  # the coder was unloaded first, and confirmed gone
    assert all(entry.size_vram == entry.size for entry in fake_ollama.loaded.values())  # nothing on the CPU
    assert "arbiter: unloading coder:12b" in ark.log.read_text()
    assert ark.metric("ark_model_resident", model="thinker:20b") == 1.0
    assert ark.metric("ark_model_resident", model="coder:12b") == 0.0
    assert ark.metric("ark_model_memory_bytes", model="thinker:20b") == fake_ollama.loaded["thinker:20b"].size
    assert ark.metric("ark_model_swaps_total") == 1.0 and ark.metric("ark_model_load_seconds_count") == 2.0
    assert ark.metric("ark_queue_wait_seconds_count") == 2.0 and ark.metric("ark_queue_depth", model="coder:12b") == 0


def test_a_clients_keep_alive_neither_unloads_nor_pins_a_managed_model(
    ark: ArkProcess, fake_ollama: FakeOllama
) -> None:
    master = {"Authorization": f"Bearer {MASTER_KEY}"}
    for asked in (0, "0", -1, "-5m", "1h", 1e300):
        for path, body in [
            ("/chat/completions", {"model": "coder:12b", "messages": [{"role": "user", "content": "hi"}]}),
            ("/completions", {"model": "coder:12b", "prompt": "hi", "max_tokens": 2}),
            ("/embeddings", {"model": "nomic-embed-text:latest", "input": "hi"}),
        ]:
            reply = httpx.post(ark.api + path, headers=master, json={**body, "keep_alive": asked}, timeout=30)
            assert reply.status_code == 200, (asked, path, reply.text)
            assert fake_ollama.requests[-1][1]["keep_alive"] == -1, (asked, path)  # the arbiter's, as a number
    assert {"coder:12b", "nomic-embed-text:latest"} <= set(fake_ollama.loaded)  # keep_alive 0 unloaded nothing
    bad = httpx.post(
        ark.api + "/chat/completions",
        headers=master,
        json={"model": "coder:12b", "messages": [{"role": "user", "content": "hi"}], "keep_alive": "soon"},
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "keep_alive"  # checked all the same


def test_a_model_is_never_unloaded_under_a_request(ark: ArkProcess, fake_ollama: FakeOllama) -> None:
    assert chat(ark, "coder:12b").status_code == 200
    # The coder's answer stops after its first chunk until the test lets it go: the thinker's request is
    # certainly made while it streams, however fast or slow this machine is.
    fake_ollama.mode = "hold_after_first"
    answers: dict[str, httpx.Response] = {}
    streamer = threading.Thread(target=lambda: answers.update(coder=chat(ark, "coder:12b", stream=True)))
    thinker = threading.Thread(target=lambda: answers.update(thinker=chat(ark, "thinker:20b")))
    streamer.start()
    try:
        assert wait_until(lambda: fake_ollama.holding == 1, 10)  # the stream is under way
        thinker.start()
        assert wait_until(lambda: queued(ark, "thinker:20b") == 1, 10)  # the thinker waits for the GPU
        assert set(fake_ollama.loaded) == {"coder:12b"} and "thinker" not in answers
    finally:
        fake_ollama.mode = "normal"
        streamer.join(30)
        if thinker.ident is not None:  # started
            thinker.join(30)
    assert answers["coder"].status_code == 200 and answers["thinker"].status_code == 200
    assert fake_ollama.unloads_in_use == 0  # the arbiter never asked Ollama to unload the coder under its request
    assert set(fake_ollama.loaded) == {"thinker:20b"}


def queued(ark: ArkProcess, model: str) -> int:
    status = httpx.get(ark.url + "/admin/gpu", headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=5).json()
    return int(next(m["queued"] for m in status["models"] if m["model"] == model))


def test_gpu_status_for_the_master_key_and_the_cli(ark: ArkProcess, fake_ollama: FakeOllama) -> None:
    import subprocess
    import sys

    started = time.monotonic()
    assert chat(ark, "coder:12b").status_code == 200
    took = time.monotonic() - started
    status = httpx.get(ark.url + "/admin/gpu", headers={"Authorization": f"Bearer {MASTER_KEY}"}).json()
    assert status["enabled"] and status["capacity_bytes"] == 16 * GIB and status["queue"] == 0
    coder = next(m for m in status["models"] if m["model"] == "coder:12b")
    assert coder["resident"] and coder["leases"] == 0 and coder["memory_source"] == "estimate"
    # The request's lease (what the drain lead is estimated from): it lasted some time within the request's,
    # however fast this machine served it (one clock for both processes: CLOCK_MONOTONIC is system-wide).
    assert 0 < coder["expected_lease_s"] <= took
    assert all(m["expected_lease_s"] is None for m in status["models"] if not m["resident"])
    assert status["used_bytes"] == coder["memory_bytes"] and status["stats"]["loads"] == 1
    assert status["holds"] == status["leases"] == []  # memory holds; "leases": their deprecated name
    assert httpx.get(ark.url + "/admin/gpu").status_code == 401
    shown = subprocess.run(
        [sys.executable, "-m", "ark", "gpu", "status", "--config", str(ark.config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "ARK_DATA_DIR": str(ark.data_dir)},
    )
    assert shown.returncode == 0, shown.stderr
    assert "coder:12b" in shown.stdout and "of 16.0 GB planned" in shown.stdout and "loads 1" in shown.stdout
    watched = subprocess.run(
        [
            *(sys.executable, "-m", "ark", "gpu", "status", "--watch", "--count", "2", "--interval", "0.1"),
            "--config",
            str(ark.config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "ARK_DATA_DIR": str(ark.data_dir)},
    )
    assert watched.returncode == 0 and "coder:12b" in watched.stdout, watched.stderr


def test_operators_load_and_unload_through_the_arbiter(ark: ArkProcess, fake_ollama: FakeOllama) -> None:
    import subprocess
    import sys

    def ark_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ark", "gpu", *args, "--config", str(ark.config)],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "ARK_DATA_DIR": str(ark.data_dir)},
        )

    master = {"Authorization": f"Bearer {MASTER_KEY}"}
    loaded = ark_cli("load", "thinker:20b")
    assert loaded.returncode == 0 and "thinker:20b: loaded" in loaded.stdout, loaded.stderr
    assert set(fake_ollama.loaded) == {"thinker:20b"}
    assert "already loaded" in ark_cli("load", "thinker:20b").stdout
    # a model serving a request is not unloaded on an operator's word either
    fake_ollama.token_delay = 0.2
    with httpx.stream(
        "POST",
        ark.api + "/chat/completions",
        headers=master,
        json={"model": "thinker:20b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "stream": True},
        timeout=30,
    ) as streaming:
        lines = streaming.iter_lines()  # kept: dropping the iterator would close the stream (the client leaves)
        next(lines)
        busy = httpx.post(ark.url + "/admin/gpu/unload", headers=master, json={"model": "thinker:20b"})
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "model_busy", busy.text
        assert "serving 1 request" in busy.json()["error"]["message"]
        for _ in lines:
            pass
    fake_ollama.token_delay = 0.0
    unloaded = ark_cli("unload", "thinker:20b")
    assert unloaded.returncode == 0 and "thinker:20b: unloaded" in unloaded.stdout, unloaded.stderr
    assert fake_ollama.loaded == {}
    assert "was not loaded" in ark_cli("unload", "thinker:20b").stdout
    missing = httpx.post(ark.url + "/admin/gpu/load", headers=master, json={"model": "nope:1b"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    bad = httpx.post(ark.url + "/admin/gpu/load", headers=master, json={"model": 7})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "model"


@pytest.mark.parametrize("require_full_gpu", [False, True])
def test_a_model_that_lands_partly_on_the_cpu_is_counted_or_refused(
    tmp_path: object, fake_ollama: FakeOllama, require_full_gpu: bool
) -> None:
    fake_ollama.add_model("thinker:20b")
    fake_ollama.vram = 8 * GIB  # the card is smaller than the arbiter was told: Ollama offloads silently
    config = CONFIG.format(key=MASTER_KEY, url=fake_ollama.url)
    config = config.replace("[gpu]\n", f"[gpu]\nrequire_full_gpu = {'true' if require_full_gpu else 'false'}\n")
    process = start_ark(config, tmp_path)  # type: ignore[arg-type]
    try:
        answer = chat(process, "thinker:20b")
        assert process.metric("ark_model_offloaded_total", model="thinker:20b") == 1.0
        if not require_full_gpu:
            assert answer.status_code == 200  # served, slowly, and counted
            assert fake_ollama.loaded["thinker:20b"].size_vram == 8 * GIB
        else:
            error = answer.json()["error"]
            assert answer.status_code == 503 and error["code"] == "model_offloaded", answer.text
            assert "did not fit on the GPU (8.0 of 11.4 GB on the GPU)" in error["message"]
            assert int(answer.headers["retry-after"]) == 30
            assert fake_ollama.loaded == {}  # unloaded again
    finally:
        stop_ark(process)


@pytest.mark.parametrize("restartable", [True, False])
def test_an_ollama_that_hangs_in_a_load_is_restarted(
    tmp_path: object, fake_ollama: FakeOllama, restartable: bool
) -> None:
    import sys
    from pathlib import Path

    import tests.fakes.ollama as fake_module

    fake_ollama.add_model("thinker:20b")
    fake_ollama.add_model("coder:12b")
    restart = f"{sys.executable} {Path(fake_module.__file__)} --restart {fake_ollama.url}" if restartable else ""
    config = CONFIG.format(key=MASTER_KEY, url=fake_ollama.url) + (
        f"first_token_timeout = 2\nrestart_command = '{restart}'\nrestart_timeout_s = 20\n"
    )
    process = start_ark(config, tmp_path)  # type: ignore[arg-type]
    try:
        assert chat(process, "coder:12b").status_code == 200
        fake_ollama.mode = "hang_after_load"  # the next load never finishes; Ollama answers nothing after it
        try:
            answer = chat(process, "thinker:20b")
        except httpx.TimeoutException:  # seen once under load in 30 runs: say what ARK was doing
            pytest.fail(f"no answer in 30 s; ARK's log:\n{process.log.read_text()[-6000:]}")
        log = process.log.read_text()
        assert "engine ollama stopped answering" in log
        if restartable:
            assert answer.status_code == 200, answer.text  # the client only saw a slower answer
            assert fake_ollama.restarts == 1 and set(fake_ollama.loaded) == {"thinker:20b"}
            assert "restarting engine ollama" in log and "answers again" in log
            assert process.metric("ark_engine_restarts_total", engine="ollama") == 1.0
        else:
            error = answer.json()["error"]
            assert answer.status_code == 503 and error["code"] == "engine_unavailable", answer.text
            assert "stopped answering and could not be restarted" in error["message"]
            assert "no restart_command" in error["message"] and answer.headers["retry-after"] == "30"
            httpx.post(fake_ollama.url + "/_fake/restart", timeout=5)  # a hung fake stays hung: bring it back
    finally:
        stop_ark(process)


def test_a_model_installed_after_the_start_is_arbitrated_at_its_first_request(
    ark: ArkProcess, fake_ollama: FakeOllama
) -> None:
    master = {"Authorization": f"Bearer {MASTER_KEY}"}

    def catalog() -> dict[str, bool]:
        status = httpx.get(ark.url + "/admin/gpu", headers=master, timeout=5).json()
        return {m["model"]: m["resident"] for m in status["models"]}

    assert "late:7b" not in catalog()
    assert chat(ark, "thinker:20b").status_code == 200
    fake_ollama.add_model("late:7b")  # `ollama pull` while ARK runs
    # the router looks an unknown name up at most every _MISS_REFRESH_INTERVAL_S: asked until it has
    assert wait_until(lambda: chat(ark, "late:7b").status_code == 200, 10 + _MISS_REFRESH_INTERVAL_S)
    assert catalog()["late:7b"] is True  # in the catalog, and loaded by the arbiter, not behind its back
    assert "GPU arbiter: new model late:7b" in ark.log.read_text()
    assert "late:7b" in fake_ollama.loaded and fake_ollama.requests[-1][1]["keep_alive"] == -1


def test_what_ollama_holds_is_a_metric_per_model(tmp_path: object, fake_ollama: FakeOllama) -> None:
    fake_ollama.add_model("coder:12b")
    fake_ollama.vram = 16 * GIB
    config = CONFIG.format(key=MASTER_KEY, url=fake_ollama.url).replace(
        'listen = "127.0.0.1:{PORT}"\n', 'listen = "127.0.0.1:{PORT}"\nmodel_refresh_s = 1\n', 1
    )
    process = start_ark(config, tmp_path)  # type: ignore[arg-type]
    try:
        assert chat(process, "coder:12b").status_code == 200
        size = fake_ollama.loaded["coder:12b"].size

        def reported() -> float:
            return process.metric("ark_engine_model_memory_bytes", engine="ollama", model="coder:12b", kind="gpu")

        assert wait_until(lambda: reported() == size, 10)
        assert process.metric("ark_engine_model_memory_bytes", engine="ollama", model="coder:12b", kind="total") == size
    finally:
        stop_ark(process)
