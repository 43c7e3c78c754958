"""A fuzzer over request heads and bodies against a live `ark up`: no crash, no hang, no 5xx on malformed
input, and nothing the server logs as a failure of its own.

Hypothesis draws the requests (derandomized: the same examples on every run, so a failure reproduces);
each is sent on a fresh connection that ends with ``Connection: close`` and must be answered before a
deadline that no correct answer comes near.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import MASTER_KEY, ArkProcess, read_until_closed, start_ark, stop_ark
from tests.fakes.ollama import FakeOllama

CONFIG = """
master_key = "{KEY}"

[gateway]
listen = "127.0.0.1:{PORT}"
head_timeout_s = 0.5
max_body_bytes = "64KiB"

[engines.ollama]
kind = "ollama"
url = "{OLLAMA}"
gpu_managed = "no"
"""
DEADLINE_S = 20.0  # a hang, not a slow answer: every answer here takes milliseconds
FUZZ = settings(
    max_examples=500,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PATHS = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/models/llama3.2:1b",
    "/key/generate",
    "/key/update",
    "/spend/logs",
    "/admin/gpu",
    "/metrics",
    "/health/ready",
]


@pytest.fixture(scope="module")
def ark(tmp_path_factory: pytest.TempPathFactory, fake_ollama_server: FakeOllama) -> Iterator[ArkProcess]:
    text = CONFIG.replace("{KEY}", MASTER_KEY).replace("{OLLAMA}", fake_ollama_server.url)
    process = start_ark(text, tmp_path_factory.mktemp("fuzz"))
    yield process
    stop_ark(process)


def exchange(ark: ArkProcess, data: bytes) -> bytes:
    """Send ``data`` on a new connection and read until the server closes it."""
    port = int(ark.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as sock:
        with contextlib.suppress(OSError):  # the server refused early and closed: its answer is still to come
            sock.sendall(data)
        try:
            return read_until_closed(sock)
        except TimeoutError:
            raise AssertionError(f"no end to the answer within {DEADLINE_S} s: {data[:300]!r}") from None


def statuses(answer: bytes) -> list[int]:
    found = []
    for line in answer.split(b"\r\n"):
        if line.startswith(b"HTTP/1.1 ") and line[9:12].isdigit():
            found.append(int(line[9:12]))
    return found


def check(ark: ArkProcess, data: bytes) -> None:
    answer = exchange(ark, data)
    codes = statuses(answer)
    event(f"answered {codes[0] if codes else 'nothing'}")  # --hypothesis-show-statistics shows the spread
    assert all(code < 500 for code in codes), (codes, data[:300], answer[:600])


_token = st.text(alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1)
_any_bytes = st.binary(max_size=200)
_header_value = st.one_of(
    st.text(max_size=100).map(lambda t: t.encode("utf-8")),
    _any_bytes,
    st.sampled_from([b"", b" ", b"\x00", b"\xff\xfe", b"chunked", b"-1", b"99999999999999999999", b"100-continue"]),
)
_header = st.tuples(
    st.one_of(
        _token.map(str.encode),
        st.sampled_from([b"Content-Length", b"Transfer-Encoding", b"Expect", b"Authorization", b"Content-Type"]),
        _any_bytes,
    ),
    _header_value,
)


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    method = draw(st.one_of(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS"]), _any_bytes))
    target = draw(
        st.one_of(
            st.sampled_from(PATHS).map(str.encode),
            st.text(max_size=200).map(lambda t: ("/" + t).encode("utf-8")),
            _any_bytes,
            st.sampled_from([b"*", b"//", b"/../../etc/passwd", b"/v1/%00", b"http://evil/v1/models", b"/%E2%82"]),
        )
    )
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 x", b"", b"\x00"]))
    headers = draw(st.lists(_header, max_size=8))
    body = draw(st.binary(max_size=512))
    lines = [method + b" " + target + b" " + version]
    lines += [name + b": " + value for name, value in headers if name.lower() != b"connection"]
    lines += [b"Host: x", b"Content-Length: %d" % len(body), b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40)),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
_fields = {
    "model": st.one_of(st.sampled_from(["llama3.2:1b", "nomic-embed-text:latest", "nope", ""]), _json),
    "messages": st.one_of(
        st.lists(
            st.fixed_dictionaries(
                {"role": st.one_of(st.sampled_from(["user", "system", "assistant", "tool"]), _json)},
                optional={"content": st.one_of(st.text(max_size=60), _json)},
            ),
            max_size=3,
        ),
        _json,
    ),
    "prompt": _json,
    "input": _json,
    "max_tokens": st.one_of(st.integers(-5, 40), _json),
    "temperature": _json,
    "top_p": _json,
    "stop": _json,
    "stream": st.one_of(st.booleans(), _json),
    "stream_options": _json,
    "keep_alive": _json,
    "options": _json,
    "n": _json,
    "seed": _json,
    "encoding_format": st.one_of(st.sampled_from(["float", "base64"]), _json),
    "duration": _json,
    "budget_duration": _json,
    "max_budget": _json,
    "key": _json,
}


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    path = draw(st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/key/generate"]))
    picked = draw(st.lists(st.sampled_from(sorted(_fields)), unique=True, max_size=6))
    document = {name: draw(_fields[name]) for name in picked}
    whole = json.dumps(document).encode()  # the standard library's: integers of any size, as clients send them
    body = draw(st.one_of(st.just(whole), st.just(whole[:-1]), _json.map(lambda value: json.dumps(value).encode())))
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {MASTER_KEY}\r\n"
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return head.encode() + body


@FUZZ
@given(data=heads())
def test_fuzzed_heads_get_an_answer_and_never_a_5xx(ark: ArkProcess, data: bytes) -> None:
    check(ark, data)


@FUZZ
@given(data=bodies())
def test_fuzzed_bodies_get_an_answer_and_never_a_5xx(ark: ArkProcess, data: bytes) -> None:
    check(ark, data)


def test_the_server_still_serves_after_the_fuzzing_and_logged_no_failure_of_its_own(ark: ArkProcess) -> None:
    log = ark.log.read_text()
    assert "Traceback" not in log and "handler failed" not in log and "unexpected error" not in log, log[-4000:]
    headers = {"Authorization": f"Bearer {MASTER_KEY}"}
    body = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(ark.api + "/chat/completions", headers=headers, json=body, timeout=30)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"]
