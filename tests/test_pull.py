"""Tests for ark.engines.pull against a real local HTTP file server."""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from rich.console import Console

from ark.engines.pull import PullError, PullResult, pull, pull_with_progress
from tests.fakes.fileserver import FileServer, SeenRequest, etag_of

MODEL = b"GGUF" + random.Random(20240501).randbytes(200_000)
MODEL_SHA = hashlib.sha256(MODEL).hexdigest()
NAME = "model.gguf"

Scenario = Callable[[FileServer, str, Path], Awaitable[None]]


def run_with_server(scenario: Scenario, models: Path, body: bytes = MODEL) -> None:
    """Start a server holding `body` as NAME and run `scenario(server, url, models)`."""

    async def main() -> None:
        async with FileServer() as server:
            await scenario(server, server.add(NAME, body), models)

    asyncio.run(main())


def leftovers(models: Path) -> list[str]:
    return sorted(p.name for p in models.iterdir()) if models.exists() else []


def assert_installed(result: PullResult, models: Path, body: bytes = MODEL) -> None:
    assert result.path == models / NAME
    assert result.path.read_bytes() == body
    assert result.size == len(body)
    assert result.sha256 == hashlib.sha256(body).hexdigest()
    assert leftovers(models) == [NAME]


async def drop_first_attempt(server: FileServer, url: str, models: Path, after: int = 64_000) -> int:
    """Make one pull break off after `after` bytes; return the .part size it left."""
    server.drop_after = after
    with pytest.raises(PullError, match="resume"):
        await pull(url, models)
    part = models / f"{NAME}.part"
    assert (models / f"{NAME}.part.json").exists()
    assert not (models / NAME).exists()
    size = part.stat().st_size
    assert 0 < size < len(MODEL)
    return size


def test_fresh_download_verifies_sha256(tmp_path: Path) -> None:
    async def scenario(server: FileServer, url: str, models: Path) -> None:
        result = await pull(url, models, sha256=MODEL_SHA.upper())
        assert_installed(result, models)
        assert result.resumed_from == 0
        assert server.requests[0].range is None

    run_with_server(scenario, tmp_path / "deep" / "models")


def test_resume_after_dropped_connection(tmp_path: Path) -> None:
    async def scenario(server: FileServer, url: str, models: Path) -> None:
        kept = await drop_first_attempt(server, url, models)
        result = await pull(url, models, sha256=MODEL_SHA)
        assert_installed(result, models)
        assert result.resumed_from == kept
        assert server.requests[-1].range == f"bytes={kept}-"
        assert server.requests[-1].if_range == etag_of(MODEL)

    run_with_server(scenario, tmp_path)


def test_server_ignoring_range_restarts_cleanly(tmp_path: Path) -> None:
    async def scenario(server: FileServer, url: str, models: Path) -> None:
        kept = await drop_first_attempt(server, url, models)
        server.ignore_range = True
        result = await pull(url, models, sha256=MODEL_SHA)
        assert_installed(result, models)
        assert result.resumed_from == 0
        assert server.requests[-1].range == f"bytes={kept}-"

    run_with_server(scenario, tmp_path)


def test_changed_upstream_file_restarts_via_if_range(tmp_path: Path) -> None:
    newer = b"GGUF" + bytes(range(256)) * 900

    async def scenario(server: FileServer, url: str, models: Path) -> None:
        await drop_first_attempt(server, url, models)
        server.files[NAME] = newer
        result = await pull(url, models)
        assert_installed(result, models, newer)
        assert result.resumed_from == 0

    run_with_server(scenario, tmp_path)


def test_416_with_complete_part_installs_it(tmp_path: Path) -> None:
    async def scenario(server: FileServer, url: str, models: Path) -> None:
        await drop_first_attempt(server, url, models)
        (models / f"{NAME}.part").write_bytes(MODEL)
        result = await pull(url, models, sha256=MODEL_SHA)
        assert_installed(result, models)
        assert result.resumed_from == len(MODEL)
        assert server.requests[-1].range == f"bytes={len(MODEL)}-"

    run_with_server(scenario, tmp_path)


def test_416_with_oversized_part_restarts(tmp_path: Path) -> None:
    async def scenario(server: FileServer, url: str, models: Path) -> None:
        await drop_first_attempt(server, url, models)
        (models / f"{NAME}.part").write_bytes(MODEL + b"trailing junk")
        result = await pull(url, models, sha256=MODEL_SHA)
        assert_installed(result, models)
        assert result.resumed_from == 0
        assert server.requests[-1].range is None

    run_with_server(scenario, tmp_path)


def test_checksum_mismatch_discards_and_keeps_existing_file(tmp_path: Path) -> None:
    wrong = "0" * 64

    models = tmp_path / "models"
    models.mkdir()
    (models / NAME).write_bytes(b"GGUF the old model")

    async def scenario(server: FileServer, url: str, models: Path) -> None:
        with pytest.raises(PullError) as caught:
            await pull(url, models, sha256=wrong)
        assert wrong in str(caught.value)
        assert MODEL_SHA in str(caught.value)
        assert (models / NAME).read_bytes() == b"GGUF the old model"
        assert leftovers(models) == [NAME]

    run_with_server(scenario, models)


def test_checksum_mismatch_leaves_no_final_file(tmp_path: Path) -> None:
    async def scenario(server: FileServer, url: str, models: Path) -> None:
        with pytest.raises(PullError, match="sha256 mismatch"):
            await pull(url, models, sha256="ab" * 32)
        assert leftovers(models) == []

    run_with_server(scenario, tmp_path)


def test_non_gguf_content_is_refused(tmp_path: Path) -> None:
    async def scenario(server: FileServer, url: str, models: Path) -> None:
        with pytest.raises(PullError, match="not a GGUF file"):
            await pull(url, models)
        assert leftovers(models) == []

    run_with_server(scenario, tmp_path, body=b"<html>please log in</html>\n" * 100)


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("http://127.0.0.1:9/files/..%2Fx.gguf", None),
        ("http://127.0.0.1:9/files/a%2Fb.gguf", None),
        ("http://127.0.0.1:9/files/..%5Cevil.gguf", None),
        ("http://127.0.0.1:9/files/.hidden.gguf", None),
        ("http://127.0.0.1:9/files/model.bin", None),
        ("http://127.0.0.1:9/", None),
        ("http://127.0.0.1:9/files/x", "../x.gguf"),
        ("http://127.0.0.1:9/files/x", "a/b.gguf"),
        ("http://127.0.0.1:9/files/x", "..\\evil.gguf"),
        ("http://127.0.0.1:9/files/x", ".hidden.gguf"),
        ("http://127.0.0.1:9/files/x", "model.safetensors"),
        ("http://127.0.0.1:9/files/x", "x\x00.gguf"),
        ("http://127.0.0.1:9/files/x", ""),
        ("file:///etc/model.gguf", None),
        ("ftp://example.com/model.gguf", None),
        ("model.gguf", None),
    ],
)
def test_bad_urls_and_path_tricks_are_refused_before_io(tmp_path: Path, url: str, name: str | None) -> None:
    models = tmp_path / "models"
    with pytest.raises(PullError):
        asyncio.run(pull(url, models, name=name))
    assert list(tmp_path.iterdir()) == []


def test_malformed_sha256_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PullError, match="64 hex digits"):
        asyncio.run(pull("http://127.0.0.1:9/m.gguf", tmp_path, sha256="abc"))


def test_name_overrides_url_file_name(tmp_path: Path) -> None:
    async def scenario(server: FileServer, url: str, models: Path) -> None:
        result = await pull(url, models, name="renamed.gguf")
        assert result.path == models / "renamed.gguf"
        assert leftovers(models) == ["renamed.gguf"]

    run_with_server(scenario, tmp_path)


def test_http_404_is_a_pull_error(tmp_path: Path) -> None:
    async def scenario(server: FileServer, url: str, models: Path) -> None:
        missing = server.url("/files/missing.gguf")
        with pytest.raises(PullError, match="404") as caught:
            await pull(missing, models)
        assert missing in str(caught.value)
        assert leftovers(models) == []

    run_with_server(scenario, tmp_path)


def test_connection_refused_is_a_pull_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/files/model.gguf"
    with pytest.raises(PullError, match="cannot download"):
        asyncio.run(pull(url, tmp_path, timeout=5))


def test_redirect_is_followed(tmp_path: Path) -> None:
    async def scenario(server: FileServer, url: str, models: Path) -> None:
        result = await pull(server.url(f"/redirect/{NAME}"), models, sha256=MODEL_SHA)
        assert_installed(result, models)
        assert [r.path for r in server.requests] == [f"/redirect/{NAME}", f"/files/{NAME}"]

    run_with_server(scenario, tmp_path)


def test_resume_through_redirect_keeps_range(tmp_path: Path) -> None:
    async def scenario(server: FileServer, url: str, models: Path) -> None:
        hub_url = server.url(f"/redirect/{NAME}")
        kept = await drop_first_attempt(server, hub_url, models)
        result = await pull(hub_url, models, sha256=MODEL_SHA)
        assert_installed(result, models)
        assert result.resumed_from == kept
        assert server.requests[-1] == SeenRequest(f"/files/{NAME}", f"bytes={kept}-", etag_of(MODEL))

    run_with_server(scenario, tmp_path)


def test_already_installed_file_is_not_downloaded_again(tmp_path: Path) -> None:
    async def scenario(server: FileServer, url: str, models: Path) -> None:
        first = await pull(url, models)
        seen = len(server.requests)
        with_sha = await pull(url, models, sha256=MODEL_SHA)
        without_sha = await pull(url, models)
        assert len(server.requests) == seen
        assert with_sha == without_sha == PullResult(first.path, first.size, first.sha256, len(MODEL))

    run_with_server(scenario, tmp_path)


def test_installed_file_with_other_digest_is_replaced(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / NAME).write_bytes(b"GGUF stale")

    async def scenario(server: FileServer, url: str, models: Path) -> None:
        result = await pull(url, models, sha256=MODEL_SHA)
        assert_installed(result, models)
        assert result.resumed_from == 0

    run_with_server(scenario, models)


def test_progress_counts_are_monotonic_and_end_at_total(tmp_path: Path) -> None:
    calls: list[tuple[int, int | None]] = []

    async def scenario(server: FileServer, url: str, models: Path) -> None:
        await pull(url, models, progress=lambda done, total: calls.append((done, total)), chunk_size=16_384)

    run_with_server(scenario, tmp_path)
    done = [d for d, _ in calls]
    assert len(calls) > 2
    assert done == sorted(done)
    assert {total for _, total in calls} == {len(MODEL)}
    assert calls[-1] == (len(MODEL), len(MODEL))


def test_progress_starts_at_resume_offset(tmp_path: Path) -> None:
    calls: list[tuple[int, int | None]] = []

    async def scenario(server: FileServer, url: str, models: Path) -> None:
        kept = await drop_first_attempt(server, url, models)
        await pull(url, models, progress=lambda done, total: calls.append((done, total)))
        assert calls[0] == (kept, len(MODEL))

    run_with_server(scenario, tmp_path)
    assert calls[-1] == (len(MODEL), len(MODEL))


def test_caller_session_is_used_and_left_open(tmp_path: Path) -> None:
    async def scenario(server: FileServer, url: str, models: Path) -> None:
        async with aiohttp.ClientSession() as session:
            result = await pull(url, models, session=session)
            assert not session.closed
        assert_installed(result, models)

    run_with_server(scenario, tmp_path)


def test_pull_with_progress_renders_to_console(tmp_path: Path) -> None:
    out = io.StringIO()

    async def scenario(server: FileServer, url: str, models: Path) -> None:
        console = Console(file=out, width=120)
        # pull_with_progress runs its own event loop, so keep it off the server's.
        result = await asyncio.to_thread(pull_with_progress, url, models, sha256=MODEL_SHA, console=console)
        assert_installed(result, models)

    run_with_server(scenario, tmp_path)
    assert NAME in out.getvalue()
