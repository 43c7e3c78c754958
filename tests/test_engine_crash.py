"""A crash in llama.cpp costs only its own request (a real `ark up` with the embedded engine and the Ollama stand-in).

The worker running a model is killed with SIGSEGV or SIGKILL in the middle of a streamed answer and in
the middle of its start: the client of that request gets 503 ``engine_crashed``, a request to the other
engine goes through meanwhile, the gateway stays live, the arbiter forgets the model and its memory,
the reservation on the key's budget is given back, and the next request starts a new worker.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import pytest

from tests.conftest import MASTER_KEY, ArkProcess, start_ark, stop_ark, wait_until
from tests.fakes.ollama import FakeOllama

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed: run scripts/install"
)

MASTER = {"Authorization": f"Bearer {MASTER_KEY}"}
GATE = Path(__file__).parent / "fakes" / "gate.py"
# One long answer reserves 60 credits of a 100-credit budget through its prompt (1 credit per 100
# bytes): a second such reservation fits only once the first has been given back.
PROMPT = "a" * 6000
CONFIG = """
master_key = "{key}"
[gateway]
listen = "127.0.0.1:{{PORT}}"
[engines.embedded]
kind = "embedded"
n_threads = 1
n_ctx = 65536
bundled_model = false
{prefix}
[engines.ollama]
kind = "ollama"
url = "{ollama}"
gpu_managed = "no"
[gpu]
device = "ram"
[models.tiny]
input_cost_per_token = 0.01
"""


def start(tmp_path: Path, tiny_gguf: Path, fake: FakeOllama, prefix: str = "") -> ArkProcess:
    models = tmp_path / "data" / "models"
    models.mkdir(parents=True)
    (models / "tiny.gguf").write_bytes(tiny_gguf.read_bytes())
    return start_ark(CONFIG.format(key=MASTER_KEY, ollama=fake.url, prefix=prefix), tmp_path)


@pytest.fixture
def ark(tmp_path: Path, tiny_gguf: Path, fake_ollama: FakeOllama) -> Iterator[ArkProcess]:
    process = start(tmp_path, tiny_gguf, fake_ollama)
    yield process
    stop_ark(process)


def key(ark: ArkProcess) -> dict[str, str]:
    made = httpx.post(ark.url + "/key/generate", headers=MASTER, json={"key_alias": "k", "max_budget": 100}).json()
    return {"Authorization": f"Bearer {made['key']}"}


def body(max_tokens: int, stream: bool = False) -> dict[str, Any]:
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


def workers(ark: ArkProcess) -> list[psutil.Process]:
    children = psutil.Process(ark.proc.pid).children()
    return [p for p in children if "ark.engines.llama_worker" in " ".join(p.cmdline())]


def gpu(ark: ArkProcess) -> dict[str, Any]:
    status = httpx.get(ark.url + "/admin/gpu", headers=MASTER, timeout=5).json()
    return next(m for m in status["models"] if m["model"] == "tiny")  # type: ignore[no-any-return]


def ollama_answers(ark: ArkProcess, results: list[int]) -> threading.Thread:
    def ask() -> None:
        answer = httpx.post(
            ark.api + "/chat/completions",
            headers=MASTER,
            json={"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6},
            timeout=30,
        )
        results.append(answer.status_code)

    thread = threading.Thread(target=ask)
    thread.start()
    return thread


def assert_recovered(ark: ArkProcess, headers: dict[str, str]) -> None:
    """Live, the model and its memory forgotten, the budget's reservation back, the next request served."""
    assert httpx.get(ark.url + "/health/live", timeout=5).status_code == 200
    assert wait_until(lambda: not gpu(ark)["resident"])
    assert gpu(ark)["leases"] == 0
    assert ark.metric("ark_engine_crashes_total", engine="embedded") == 1.0
    again = httpx.post(ark.api + "/chat/completions", headers=headers, json=body(3), timeout=60)
    assert again.status_code == 200, again.text  # 60 credits reserved again: the first 60 were given back
    assert again.json()["usage"]["completion_tokens"] == 3
    assert len(workers(ark)) == 1


@pytest.mark.parametrize("how", [signal.SIGSEGV, signal.SIGKILL])
def test_a_worker_killed_mid_stream_fails_only_that_stream(ark: ArkProcess, how: int) -> None:
    headers = key(ark)
    events: list[dict[str, Any]] = []
    others: list[int] = []
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", ark.api + "/chat/completions", headers=headers, json=body(60000, True)) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data: {"):
                events.append(orjson.loads(line[6:]))
                if len(events) == 2:
                    break
        (worker,) = workers(ark)
        other = ollama_answers(ark, others)
        os.kill(worker.pid, how)
        for line in lines:
            if line.startswith("data: {"):
                events.append(orjson.loads(line[6:]))
    other.join(30)
    error = events[-1]["error"]
    assert error["code"] == "engine_crashed" and error["type"] == "server_error"
    assert signal.Signals(how).name in error["message"]
    assert all("choices" in e for e in events[:-1]) and len(events) >= 3
    assert others == [200]  # the other engine answered while the worker died
    assert_recovered(ark, headers)
    log = ark.log.read_text()
    assert f"died of {signal.Signals(how).name}" in log and "CPU variant" in log


@pytest.mark.parametrize("how", [signal.SIGSEGV, signal.SIGKILL])
def test_a_worker_killed_while_it_starts_fails_only_that_request(
    tmp_path: Path, tiny_gguf: Path, fake_ollama: FakeOllama, how: int
) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    ark = start(tmp_path, tiny_gguf, fake_ollama, prefix=f'worker_prefix = "{sys.executable} {GATE} {gate}"')
    try:
        headers = key(ark)
        answers: list[httpx.Response] = []
        asking = threading.Thread(
            target=lambda: answers.append(
                httpx.post(ark.api + "/chat/completions", headers=headers, json=body(3), timeout=60)
            )
        )
        asking.start()
        assert wait_until(lambda: any(gate.glob("held-*")), timeout=30)
        (held,) = gate.glob("held-*")
        others: list[int] = []
        ollama_answers(ark, others).join(30)  # the gateway serves the other engine while this load hangs
        assert others == [200]
        os.kill(int(held.name.removeprefix("held-")), how)
        asking.join(60)
        (answer,) = answers
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "engine_crashed"
        assert answer.headers.get("retry-after")
        (gate / "open").touch()
        assert_recovered(ark, headers)
    finally:
        stop_ark(ark)


def test_no_worker_outlives_a_killed_ark_even_in_the_middle_of_an_answer(ark: ArkProcess) -> None:
    answer = httpx.post(ark.api + "/chat/completions", headers=MASTER, json=body(2), timeout=60)
    assert answer.status_code == 200
    (worker,) = workers(ark)
    idle = sum(worker.cpu_times()[:2])

    # a whole answer of 60000 tokens: the worker samples without touching its socket until the end, so
    # only the kernel (PR_SET_PDEATHSIG) can tell it that ARK is gone
    def ask() -> None:
        with contextlib.suppress(httpx.HTTPError):  # ARK goes away under it
            httpx.post(ark.api + "/chat/completions", headers=MASTER, json=body(60000), timeout=120)

    asking = threading.Thread(target=ask)
    asking.start()
    assert wait_until(lambda: sum(worker.cpu_times()[:2]) > idle + 1.0, timeout=60)  # it is generating
    ark.proc.kill()  # no clean-up code runs
    ark.proc.wait(10)
    assert wait_until(lambda: not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE, timeout=10)
    asking.join(30)
