"""The embedded engine's worker processes: the frame protocol, a worker that breaks it or dies, and the real
llama.cpp worker (cancellation reaching the sampler, crashes, restarts with back-off, two models at once)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import signal
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ark.arbiter.drivers import DriverError, EmbeddedDriver
from ark.config import EngineSettings, load_settings
from ark.engines import frames
from ark.engines.base import ChatRequest, EmbeddingRequest, Sampling
from ark.engines.embedded import EmbeddedEngine
from ark.errors import EngineCrashed, InvalidRequest, UpstreamError
from tests.conftest import wait_until

FAKE = [sys.executable, str(Path(__file__).parent / "fakes" / "worker.py")]
HI = [{"role": "user", "content": "hi"}]


def engine_settings(
    tmp_path: Path, models: tuple[str, ...] = (), tiny: Path | None = None, n_ctx: int = 2048, extra: str = ""
) -> EngineSettings:
    models_dir = tmp_path / "models"
    models_dir.mkdir(exist_ok=True)
    for name in models:
        target = models_dir / f"{name}.gguf"
        if tiny is not None:
            target.write_bytes(tiny.read_bytes())
        else:
            target.write_bytes(b"GGUF")  # the fake worker never reads it
    config = tmp_path / "ark.toml"
    config.write_text(
        f'[engines.embedded]\nkind = "embedded"\nn_threads = 1\nn_ctx = {n_ctx}\nbundled_model = false\n'
        f'models_dir = "{models_dir}"\n{extra}'
    )
    return load_settings(config_path=config, env={"ARK_DATA_DIR": str(tmp_path)}).engines[0]


def chat(model: str, max_tokens: int | None = 4, **body: Any) -> ChatRequest:
    return ChatRequest(model, HI, Sampling(max_tokens=max_tokens, temperature=0.0, seed=1), False, dict(body))


async def _first(stream: AsyncIterator[Any], n: int) -> list[Any]:
    got = []
    async for chunk in stream:
        got.append(chunk)
        if len(got) == n:
            break
    return got


# -- frames ------------------------------------------------------------------------------------------


def test_a_frame_round_trips_and_garbage_is_refused() -> None:
    frame = {"id": 3, "type": "chunk", "data": {"text": "é"}}
    encoded = frames.encode(frame)
    assert struct.unpack(">I", encoded[:4])[0] == len(encoded) - 4
    assert frames.check_from_worker(frames.decode(encoded[4:])) == frame
    for payload, why in [
        (b"not json", "not JSON"),
        (b"[1]", "integer id"),
        (b'{"id": "3", "type": "done", "data": {}}', "integer id"),
        (b'{"id": 3, "type": "surprise"}', "unknown frame type"),
        (b'{"id": 3, "type": "chunk", "data": [1]}', "without an object"),
        (b'{"id": 3, "type": "error"}', "without a message"),
    ]:
        with pytest.raises(frames.FrameError, match=why):
            frames.check_from_worker(frames.decode(payload))


def _read_all(*reads: bytes) -> list[Any]:
    """Frames as the parser cuts them from these reads, then the end of the stream (or the error)."""
    parser = frames.Parser()
    got: list[Any] = []
    try:
        for data in reads:
            got.extend(parser.feed(data))
        parser.end()
    except frames.FrameError as exc:
        got.append(str(exc))
    return got


def test_frames_are_cut_however_the_reads_split_them_and_a_stream_ends_only_between_frames() -> None:
    one, two = frames.encode({"id": 1, "type": "loaded"}), frames.encode({"id": 2, "type": "stats", "data": {}})
    both = one + two
    assert _read_all(both) == [{"id": 1, "type": "loaded"}, {"id": 2, "type": "stats", "data": {}}]
    for cut in range(1, len(both)):  # every split point, in the header and in the payload
        assert _read_all(both[:cut], both[cut:]) == _read_all(both)
    assert _read_all(*(bytes([b]) for b in both)) == _read_all(both)  # a byte at a time
    assert _read_all(one + two[:2])[-1] == "the stream ended inside a header"
    assert _read_all(one + two[:-1])[-1] == "the stream ended inside a frame"
    assert "at most" in _read_all(struct.pack(">I", frames.MAX_FRAME + 1))[-1]
    assert "not JSON" in _read_all(struct.pack(">I", 3) + b"{x}" + one)[-1]


# -- a worker that breaks the protocol or dies: the engine answers, and goes on ---------------------------


@pytest.mark.parametrize(
    "mode", ["garbage", "not-an-object", "oversized", "stranger", "bad-type", "wrong-end", "bad-hello"]
)
def test_a_malformed_frame_is_an_engine_error_and_the_next_worker_serves(tmp_path: Path, mode: str) -> None:
    async def scenario() -> None:
        settings = engine_settings(tmp_path, ("m",))
        broken = EmbeddedEngine(settings, worker=[*FAKE, mode])
        lost: list[str] = []
        broken.on_lost = lost.append
        with pytest.raises(UpstreamError, match="malformed frame"):
            await broken.chat(chat("m"))
        assert broken.crashes == 1 and lost == ["m"] and broken.loaded_models() == set()
        await broken.close()
        healthy = EmbeddedEngine(settings, worker=[*FAKE, "ok"])  # the same engine code, a well-behaved worker
        assert (await healthy.chat(chat("m")))["choices"][0]["delta"]["content"] == "x"
        await healthy.close()

    asyncio.run(scenario())


def starts(argv_log: Path) -> list[str]:
    """The --exclude argument of every worker started, in order."""
    runs = [run.split("\n") for run in argv_log.read_text().split("---\n")[:-1]]
    return [run[run.index("--exclude") + 1] for run in runs]


def test_a_variant_that_faults_before_any_answer_is_excluded_once_the_next_one_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv_log = tmp_path / "argv"
    monkeypatch.setenv("ARK_FAKE_WORKER_ARGV", str(argv_log))

    async def scenario() -> None:
        engine = EmbeddedEngine(engine_settings(tmp_path, ("m",)), worker=[*FAKE, "segv-on-zen4"])
        with pytest.raises(EngineCrashed, match="died of SIGSEGV") as caught:
            await engine.chat(chat("m"))
        assert caught.value.status == 503 and caught.value.code == "engine_crashed"
        assert (await engine.chat(chat("m")))["choices"]  # the next variant (icelake in the stand-in) answers
        await engine.unload("m")
        assert (await engine.chat(chat("m")))["choices"]
        assert engine.crashes == 1
        await engine.close()

    asyncio.run(scenario())
    assert starts(argv_log) == ["", "zen4", "zen4"]  # on trial, then excluded for good


def test_a_model_that_faults_whatever_the_variant_excludes_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv_log = tmp_path / "argv"
    monkeypatch.setenv("ARK_FAKE_WORKER_ARGV", str(argv_log))
    now = [0.0]

    async def scenario() -> None:
        engine = EmbeddedEngine(engine_settings(tmp_path, ("m",)), worker=[*FAKE, "segv"], clock=lambda: now[0])
        for _ in range(4):
            with pytest.raises(EngineCrashed, match="died of SIGSEGV"):
                await engine.chat(chat("m"))
            now[0] += 100.0  # past any back-off
        await engine.close()

    asyncio.run(scenario())
    # zen4 on trial, icelake faults too: the variant is not the cause, nothing is excluded; and so on
    assert starts(argv_log) == ["", "zen4", "", "zen4"]


def test_a_crash_is_reported_with_its_signal_and_the_workers_last_words(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        engine = EmbeddedEngine(engine_settings(tmp_path, ("m",)), worker=[*FAKE, "shout"])
        with pytest.raises(EngineCrashed, match="died of SIGABRT"):
            await engine.chat(chat("m"))
        await engine.close()

    with caplog.at_level(logging.ERROR, logger="ark.engines"):
        asyncio.run(scenario())
    (report,) = [r.getMessage() for r in caplog.records if "died of SIGABRT" in r.getMessage()]
    assert "its last words:" in report and report.endswith("GGML_ASSERT(boom) failed")
    assert len(report) < 3000  # a megabyte of noise on stderr does not land in the log line


def test_a_worker_that_cannot_be_started_is_an_engine_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        settings = engine_settings(tmp_path, ("m",), extra='worker_prefix = "/nonexistent/numactl -N 0"\n')
        engine = EmbeddedEngine(settings, worker=[*FAKE, "ok"])
        with pytest.raises(UpstreamError, match=r"cannot start a worker .*/nonexistent/numactl"):
            await engine.chat(chat("m"))
        assert engine.stats()["loaded_models"] == 0 and engine.crashes == 0
        await engine.close()

    asyncio.run(scenario())


def test_crashes_in_a_row_back_off_on_the_engines_clock(tmp_path: Path) -> None:
    now = [1000.0]

    async def scenario() -> None:
        engine = EmbeddedEngine(
            engine_settings(tmp_path, ("m",)), worker=[*FAKE, "segv-at-start"], clock=lambda: now[0]
        )
        for _ in range(2):  # the first restart is at once
            with pytest.raises(EngineCrashed, match="died of SIGSEGV"):
                await engine.chat(chat("m"))
        with pytest.raises(EngineCrashed, match="2 times in a row") as caught:
            await engine.chat(chat("m"))
        assert caught.value.retry_after == pytest.approx(1.0)
        now[0] += 1.0
        with pytest.raises(EngineCrashed, match="died of SIGSEGV"):  # tried again: a third crash
            await engine.chat(chat("m"))
        with pytest.raises(EngineCrashed, match="3 times in a row") as caught:
            await engine.chat(chat("m"))
        assert caught.value.retry_after == pytest.approx(2.0)  # doubled
        assert engine.crashes == 3
        await engine.close()

    asyncio.run(scenario())


def test_a_stream_left_while_its_socket_is_paused_does_not_stall_the_next_request(tmp_path: Path) -> None:
    async def scenario() -> None:
        engine = EmbeddedEngine(engine_settings(tmp_path, ("m",)), worker=[*FAKE, "burst"])
        stream = engine.chat_stream(ChatRequest("m", HI, Sampling(max_tokens=4), True, {}))
        await _first(stream, 1)  # 100 chunks and the done came in one read: the socket paused at 64 waiting
        await stream.aclose()
        async with asyncio.timeout(30):  # a hang fails here instead of stalling the suite
            assert (await engine.chat(chat("m")))["choices"]
        await engine.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("yields", [0, 1, 2, 5, 20])
def test_closing_the_engine_while_a_worker_starts_ends_it(tmp_path: Path, yields: int) -> None:
    async def scenario() -> None:
        engine = EmbeddedEngine(engine_settings(tmp_path, ("m",)), worker=[*FAKE, "ok"])
        asking = asyncio.create_task(engine.chat(chat("m")))
        for _ in range(yields):  # close at different points of the start: before, during, after the spawn
            await asyncio.sleep(0)
        async with asyncio.timeout(30):
            await engine.close()
            result = await asyncio.gather(asking, return_exceptions=True)
        assert engine.workers() == {}  # none left behind, whenever the close came
        assert isinstance(result[0], (EngineCrashed, UpstreamError)) or result[0]["choices"]

    asyncio.run(scenario())


def test_requests_queued_on_a_worker_that_dies_fail_and_start_no_worker_the_arbiter_does_not_know(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        engine = EmbeddedEngine(engine_settings(tmp_path, ("m",)), worker=[*FAKE, "hold"])
        engine.on_lost = lambda model: None  # as when the arbiter manages the engine
        await engine.load("m")
        stream = engine.chat_stream(ChatRequest("m", HI, Sampling(), True, {}))
        await _first(stream, 1)  # the worker holds this one
        queued = asyncio.create_task(engine.chat(chat("m")))
        await asyncio.sleep(0)
        os.kill(engine.workers()["m"], signal.SIGKILL)
        with pytest.raises(EngineCrashed, match="died of SIGKILL"):
            await anext(stream)
        with pytest.raises(EngineCrashed, match="died while this request waited"):
            await queued
        assert engine.workers() == {}  # nothing started behind the arbiter's back
        await engine.close()

    asyncio.run(scenario())


def test_a_worker_killed_while_it_loads_fails_the_load_and_one_that_never_loads_is_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mark = tmp_path / "loading"
    monkeypatch.setenv("ARK_FAKE_WORKER_MARK", str(mark))

    async def scenario() -> None:
        engine = EmbeddedEngine(engine_settings(tmp_path, ("m",)), worker=[*FAKE, "hang-load"])
        loading = asyncio.create_task(engine.load("m"))
        assert await asyncio.to_thread(wait_until, mark.exists, 30)  # the worker has the load in hand
        os.kill(engine.workers()["m"], signal.SIGSEGV)
        with pytest.raises(EngineCrashed, match="died of SIGSEGV"):
            await loading
        mark.unlink()
        # the arbiter's driver gives a load its deadline, then ends the worker: no memory it does not count
        driver = EmbeddedDriver(engine, n_ctx=512, deadline=0.5)
        with pytest.raises(DriverError, match="did not load m within"):
            await driver.load("m")
        assert mark.exists() and engine.workers() == {} and engine.loaded_models() == set()
        await engine.close()

    asyncio.run(scenario())


# -- the real llama.cpp worker ---------------------------------------------------------------------------

needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed: run scripts/install"
)


@needs_llama
def test_the_worker_generates_streams_embeds_and_refuses_bad_input(tmp_path: Path, tiny_gguf: Path) -> None:
    async def scenario() -> None:
        engine = EmbeddedEngine(engine_settings(tmp_path, ("tiny",), tiny_gguf))
        await engine.load("tiny")
        assert engine.loaded_models() == {"tiny"} and engine.loads == 1
        whole = await engine.chat(chat("tiny", max_tokens=5))
        assert whole["usage"]["completion_tokens"] == 5 and whole["model"] == "tiny"
        streamed = [c async for c in engine.chat_stream(chat("tiny", max_tokens=5))]
        assert [c["usage"]["completion_tokens"] for c in streamed if "usage" in c] == [5]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in streamed if c["choices"])
        assert text == whole["choices"][0]["message"]["content"]  # same seed, same tokens, either way
        embedded = await engine.embed(EmbeddingRequest("tiny", ["a", "b"], {}))
        assert len(embedded["data"]) == 2 and len(embedded["data"][0]["embedding"]) > 0
        with pytest.raises(InvalidRequest, match="outside the vocabulary"):
            await engine.chat(chat("tiny", logit_bias={"99999999": 1}))
        assert engine.stats()["generated_tokens"] >= 10 and engine.crashes == 0
        pid = engine.workers()["tiny"]
        await engine.unload("tiny")
        assert engine.loaded_models() == set()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the process is gone, and its memory with it
        await engine.close()

    asyncio.run(scenario())


@needs_llama
def test_cancelling_a_stream_stops_the_sampler_in_the_worker(tmp_path: Path, tiny_gguf: Path) -> None:
    async def scenario() -> None:
        engine = EmbeddedEngine(engine_settings(tmp_path, ("tiny",), tiny_gguf, n_ctx=65536))
        stream = engine.chat_stream(chat("tiny", max_tokens=60000))  # longer than any test would wait for
        assert len(await _first(stream, 3)) == 3
        await stream.aclose()  # what the gateway does when the client leaves
        # the worker runs one job at a time: this answers only once the cancelled one has stopped
        await engine.chat(chat("tiny", max_tokens=2))
        after = (await engine.worker_stats("tiny"))["sampled"]
        # three tokens read, at most what the pipe and the inbox held on top, and the two of the second request
        assert after < 3 + 4096 + 2
        assert (await engine.worker_stats("tiny"))["sampled"] == after  # nothing runs on in the background
        await engine.close()

    asyncio.run(scenario())


@needs_llama
@pytest.mark.parametrize("how", [signal.SIGSEGV, signal.SIGKILL])
def test_a_worker_killed_mid_stream_costs_only_its_request(
    tmp_path: Path, tiny_gguf: Path, how: int, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        engine = EmbeddedEngine(engine_settings(tmp_path, ("a", "b"), tiny_gguf, n_ctx=65536))
        lost: list[str] = []
        engine.on_lost = lost.append
        stream = engine.chat_stream(chat("a", max_tokens=60000))
        await _first(stream, 2)
        other = engine.chat_stream(chat("b", max_tokens=60000))  # a second model, generating at the same time
        await _first(other, 2)
        workers = engine.workers()
        assert workers["a"] != workers["b"]
        os.kill(workers["a"], how)
        with pytest.raises(EngineCrashed, match=f"died of {signal.Signals(how).name}"):
            async for _ in stream:
                pass
        assert lost == ["a"] and engine.crashes == 1 and "a" not in engine.loaded_models()
        assert len(await _first(other, 5)) == 5  # the other model's worker never noticed
        await other.aclose()
        with pytest.raises(EngineCrashed, match="died while this request waited"):
            await engine.chat(chat("a"))  # the arbiter was told it is gone: no worker it does not know of
        await engine.load("a")  # as the arbiter does for the next request
        again = await engine.chat(chat("a", max_tokens=3))  # a new worker
        # it had answered before it died: its CPU variant is not suspected
        assert not [r for r in caplog.records if "next variant" in r.getMessage()]
        assert again["usage"]["completion_tokens"] == 3 and engine.workers()["a"] != workers["a"]
        await engine.close()

    asyncio.run(scenario())
