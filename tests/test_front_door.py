"""The front door against a live `ark up`, tried as an attacker would: an endless header, a huge upstream
answer, a flood of idle connections, a client that stops reading, and a fuzzer over heads and bodies.

Engines behind it: the Ollama stand-in under the GPU arbiter (a virtual 16 GiB device) and an
OpenAI-compatible upstream (the vLLM stand-in) that answers embeddings of any size.
"""

from __future__ import annotations

import contextlib
import resource
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import MASTER_KEY, ArkProcess, LoopThread, read_until_closed, start_ark, stop_ark, wait_until
from tests.fakes.ollama import FakeOllama
from tests.fakes.openai_upstream import FakeOpenAIUpstream, vector

CONFIG = """
master_key = "{KEY}"

[gateway]
listen = "127.0.0.1:{PORT}"
write_timeout_s = 1.0
max_connections = 1000
max_connections_per_client = 64

[gpu]
device = "virtual"
memory_gb = 16
reserve_gb = 0

[engines.ollama]
kind = "ollama"
url = "{OLLAMA}"

[engines.vllm]
kind = "openai"
url = "{VLLM}"

[models."llama3.2:1b"]
output_cost_per_token = 0.000001
"""
ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def upstream(loop_thread: LoopThread) -> Iterator[FakeOpenAIUpstream]:
    fake = FakeOpenAIUpstream(dims=1024)
    loop_thread.run(fake.start())
    yield fake
    loop_thread.run(fake.stop())


@pytest.fixture(scope="module")
def ark(
    tmp_path_factory: pytest.TempPathFactory, fake_ollama_server: FakeOllama, upstream: FakeOpenAIUpstream
) -> Iterator[ArkProcess]:
    text = CONFIG.replace("{KEY}", MASTER_KEY).replace("{OLLAMA}", fake_ollama_server.url)
    process = start_ark(text.replace("{VLLM}", upstream.url), tmp_path_factory.mktemp("front-door"))
    yield process
    stop_ark(process)


def rss(ark: ArkProcess) -> int:
    for line in Path(f"/proc/{ark.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_an_endless_header_is_refused_431_and_costs_the_server_no_memory(ark: ArkProcess) -> None:
    address = ("127.0.0.1", int(ark.url.rsplit(":", 1)[1]))
    for _ in range(3):  # the same path, small, so that what it allocates once is there before the baseline
        with socket.create_connection(address, timeout=10) as warm:
            with contextlib.suppress(OSError):
                warm.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Endless: " + b"a" * 128 * 1024)
            read_until_closed(warm)
    before = rss(ark)
    sent = 0
    with socket.create_connection(address, timeout=10) as sock:
        try:
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Endless: ")
            while sent < MIB:  # the case; the old server buffered any amount (120 MiB in 15 s)
                sent += sock.send(b"a" * 65536)
        except OSError:  # reset or broken pipe: the server stopped listening
            pass
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), (sent, answer[:200])
    assert b"request_header_fields_too_large" in answer
    # what the client sent after the answer was read and thrown away (a lingering close), never kept
    assert rss(ark) - before < 8 * MIB
    assert httpx.get(ark.url + "/health/live", timeout=10).status_code == 200


def test_a_20_mib_embedding_from_an_openai_compatible_upstream_is_relayed_intact(
    ark: ArkProcess, upstream: FakeOpenAIUpstream
) -> None:
    inputs = [f"passage number {i}" for i in range(1100)]  # 1100 x 1024 floats: over 20 MiB of JSON
    response = httpx.post(
        ark.api + "/embeddings", headers=ADMIN, json={"model": "embedder", "input": inputs}, timeout=120
    )
    assert response.status_code == 200, response.text[:500]
    assert len(response.content) > 20 * MIB
    data = response.json()["data"]
    assert [item["index"] for item in data] == list(range(1100))
    assert all(item["embedding"] == vector(text, 1024) for item, text in zip(data, inputs, strict=True))


def _open_many(port: int, source: str, count: int) -> list[socket.socket]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < count + 512:
        pytest.skip(f"this machine's hard limit on open files ({hard}) is below the {count + 512} the test needs")
    if soft < count + 512:  # Debian's soft default is 1024
        resource.setrlimit(resource.RLIMIT_NOFILE, (count + 512, hard))
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sockets.append(sock)
            sock.bind((source, 0))
            sock.connect(("127.0.0.1", port))
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def test_2000_idle_connections_from_one_address_do_not_keep_another_out(ark: ArkProcess) -> None:
    port = int(ark.url.rsplit(":", 1)[1])

    def refused() -> float:
        return ark.metric("ark_requests_total", model="unknown", status="429") - refused_before

    refused_before = ark.metric("ark_requests_total", model="unknown", status="429")
    flood = _open_many(port, "127.0.0.2", 2000)  # twice the total (1000), were they all let in
    try:
        # all but the per-client cap (64) are answered 429 at once; the 64 stay open (idle) until their
        # head timeout (30 s), so another address finds the server with room for it
        assert wait_until(lambda: refused() == 2000 - 64, 30), refused()
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.3")) as other:
            assert other.get(ark.url + "/v1/models", headers=ADMIN, timeout=10).status_code == 200
        first_refused = flood[64]
        first_refused.settimeout(10)
        answer = first_refused.recv(65536)
        assert answer.startswith(b"HTTP/1.1 429 ") and b"too_many_connections" in answer
    finally:
        for sock in flood:
            sock.close()


def _gpu_leases(ark: ArkProcess, model: str) -> int:
    status = httpx.get(ark.url + "/admin/gpu", headers=ADMIN, timeout=10).json()
    return next(int(m["leases"]) for m in status["models"] if m["model"] == model)


def test_a_client_that_stops_reading_releases_its_gpu_lease_and_budget_within_the_write_timeout(
    ark: ArkProcess, fake_ollama: FakeOllama
) -> None:
    model = "llama3.2:1b"
    key = httpx.post(ark.url + "/key/generate", headers=ADMIN, json={"max_budget": 1.5}, timeout=10).json()["key"]
    auth = {"Authorization": f"Bearer {key}"}

    fake_ollama.reply_tokens = 1_000_000  # ~100 MB of events: far more than any socket buffers hold
    port = int(ark.url.rsplit(":", 1)[1])
    hi = [{"role": "user", "content": "hi"}]
    body = orjson.dumps({"model": model, "messages": hi, "max_tokens": 1_000_000, "stream": True})  # 1 credit of 1.5
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    stalled = socket.socket()
    try:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", port))
        stalled.sendall(head.encode() + body)
        assert wait_until(lambda: _gpu_leases(ark, model) == 1, 30)  # the stream has its lease on the model
        second = {"model": model, "messages": hi, "max_tokens": 750_000}
        while_held = httpx.post(ark.api + "/chat/completions", headers=auth, json=second, timeout=30)
        assert while_held.status_code == 429 and while_held.json()["error"]["code"] == "insufficient_quota"
        # nothing is read from here on: within the write timeout (1 s) the gateway cuts the connection
        assert wait_until(lambda: _gpu_leases(ark, model) == 0, 30)
    finally:
        stalled.close()

    def spend() -> float:
        info = httpx.get(ark.url + "/key/info", headers=ADMIN, params={"key": key}, timeout=10).json()["info"]
        return float(info["spend"])

    assert wait_until(lambda: spend() > 0, 10)  # the ledger is written beside serving
    assert spend() < 1.0  # settled at the tokens that went out, not the reservation
    fake_ollama.reply_tokens = 6
    after = httpx.post(ark.api + "/chat/completions", headers=auth, json=second, timeout=30)
    assert after.status_code == 200  # the reservation was given back
