"""Shared fixtures: a CliRunner, a tiny real GGUF, the Ollama stand-in on a real port, `ark up` as a real process."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from click.testing import CliRunner

from ark.config import Settings, load_settings
from tests.fakes.ollama import FakeOllama
from tests.gguf_factory import make_tiny_gguf

T = TypeVar("T")
MASTER_KEY = "sk-ark-test-0123456789abcdefghijklmnopqrstuvwxyz"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture(scope="session", autouse=True)
def no_ark_settings_from_the_shell() -> Iterator[None]:
    """No test, and no process a test starts, reads the ARK_* variables of the shell that runs the suite
    (a developer's ARK_DATA_DIR or ARK_MASTER_KEY would point tests at their own ARK)."""
    with pytest.MonkeyPatch.context() as patch:
        for var in [v for v in os.environ if v.startswith("ARK_")]:
            patch.delenv(var)
        yield


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A CliRunner for `ark` commands that sees none of the caller's ARK_* variables."""
    for var in [v for v in os.environ if v.startswith("ARK_")]:
        monkeypatch.delenv(var)
    return CliRunner()


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


class LoopThread:
    """An asyncio loop on a thread, so sync tests can run async servers beside them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="session")
def fake_ollama_server(loop_thread: LoopThread) -> Iterator[FakeOllama]:
    fake = FakeOllama(models=("llama3.2:1b", "nomic-embed-text:latest"), reply_tokens=6)
    loop_thread.run(fake.start())
    yield fake
    loop_thread.run(fake.stop())


@pytest.fixture
def fake_ollama(fake_ollama_server: FakeOllama) -> Iterator[FakeOllama]:
    """The session's stand-in, reset to normal behaviour for each test."""
    fake_ollama_server.reset()
    yield fake_ollama_server
    fake_ollama_server.reset()


@dataclass
class ArkProcess:
    url: str
    data_dir: Path
    config: Path
    proc: subprocess.Popen[bytes]
    log: Path
    console: str = ""  # the console's base URL (sign-in, /auth/verify)

    @property
    def api(self) -> str:
        return self.url + "/v1"

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=5).text

    def metric(self, name: str, **labels: str) -> float:
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.metrics().splitlines():
            if line.startswith(name + ("{" if labels else " ")):
                head, _, value = line.rpartition(" ")
                got = head[len(name) :].strip("{}")
                if ",".join(sorted(got.split(","))) == want or (not labels and not got):
                    return float(value)
        return 0.0


def start_ark(config_text: str, tmp: Path, env: dict[str, str] | None = None, timeout: float = 30.0) -> ArkProcess:
    """`python -m ark up` as a real process on a free port; returns once /health/ready says so."""
    port = free_port()
    data = tmp / "data"
    data.mkdir(exist_ok=True)
    config = tmp / "ark.toml"
    config.write_text(config_text.replace("{PORT}", str(port)).replace("{DATA}", str(data)))
    log = tmp / "ark-up.log"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("ARK_")}
    child_env["ARK_DATA_DIR"] = str(data)  # never the user's own data directory
    child_env["ARK_CONSOLE_LISTEN"] = f"127.0.0.1:{free_port()}"  # not 8080: tests run side by side
    child_env["ARK_MONITOR_EMBEDDED"] = "no"  # no Prometheus per test; the monitoring tests ask for it
    child_env.update(env or {})
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ark", "up", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env,
        )
    ark = ArkProcess(f"http://127.0.0.1:{port}", data, config, proc, log, "http://" + child_env["ARK_CONSOLE_LISTEN"])

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"ark up exited with {proc.returncode}:\n{log.read_text()}")
        try:
            return httpx.get(ark.url + "/health/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    if not wait_until(ready, timeout):
        proc.kill()
        raise RuntimeError(f"ark up did not become ready:\n{log.read_text()}")
    return ark


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, 10 s to go, then SIGKILL."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def stop_ark(ark: ArkProcess) -> None:
    stop_process(ark.proc)


def monitoring_env(embedded: str) -> tuple[dict[str, int], dict[str, str]]:
    """Free loopback ports for Prometheus, node_exporter and Alertmanager, and the ARK_MONITOR_* settings that
    put `ark up`'s monitoring there (scraped every second)."""
    ports = {name: free_port() for name in ("prometheus", "node", "alertmanager")}
    env = {
        "ARK_MONITOR_EMBEDDED": embedded,
        "ARK_MONITOR_SCRAPE_INTERVAL_S": "1",
        "ARK_MONITOR_PROMETHEUS_LISTEN": f"127.0.0.1:{ports['prometheus']}",
        "ARK_MONITOR_NODE_EXPORTER_LISTEN": f"127.0.0.1:{ports['node']}",
        "ARK_MONITOR_ALERTMANAGER_LISTEN": f"127.0.0.1:{ports['alertmanager']}",
    }
    return ports, env


# -- PostgreSQL: a throwaway cluster for the session ------------------------------------------------


@dataclass
class Postgres:
    host: str
    port: int
    user: str

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = f"ark_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _pg_bin() -> Path:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    pytest.fail("PostgreSQL is not installed: `apt-get install postgresql` (scripts/install --test does it)")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """initdb + pg_ctl on a free port, as the postgres user when the suite runs as root (initdb refuses root)."""
    bin_dir = _pg_bin()
    # not under pytest's tmp dir: that is private to root, and the server runs as postgres
    root = Path(tempfile.mkdtemp(prefix="ark-test-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        pg = pwd.getpwnam("postgres")
        for path in (root, sockets):
            os.chown(path, pg.pw_uid, pg.pw_gid)
        as_user = ["setpriv", f"--reuid={pg.pw_uid}", f"--regid={pg.pw_gid}", "--init-groups"]
    user = "postgres"
    port = free_port()
    subprocess.run(
        [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        yield Postgres("127.0.0.1", port, user)
    finally:
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


def embedded_ark(
    tmp: Path,
    tiny_gguf: Path,
    *,
    models: tuple[str, ...] = ("tiny",),
    store: str = "",
    n_ctx: int = 512,
    max_queue: int = 1000,
    extra: str = "",
) -> ArkProcess:
    """`ark up` with MASTER_KEY, the embedded engine on copies of the tiny GGUF, SQLite (or ``store``)."""
    data = tmp / "data"
    (data / "models").mkdir(parents=True, exist_ok=True)
    for name in models:
        shutil.copy(tiny_gguf, data / "models" / f"{name}.gguf")
    config = (
        f'master_key = "{MASTER_KEY}"\n[gateway]\nlisten = "127.0.0.1:{{PORT}}"\n[store]\nurl = "{store}"\n'
        f'[engines.embedded]\nkind = "embedded"\nn_threads = 1\nn_ctx = {n_ctx}\nbundled_model = false\n'
        f"max_queue = {max_queue}\n{extra}"
    )
    return start_ark(config, tmp, env={"ARK_DATA_DIR": str(data)})


def settings_for(tmp_path: Path, config_text: str) -> Settings:
    """Settings for a runtime built in-process: ``config_text`` as ark.toml, no ARK_* from the shell, the
    data directories made (what `ark up` does before it starts)."""
    config = tmp_path / "ark.toml"
    config.write_text(config_text)
    settings = load_settings(config_path=config, data_dir=tmp_path / "data", env={})
    for folder in (settings.data_dir, settings.models_dir, settings.logs_dir):
        folder.mkdir(parents=True, exist_ok=True)
    return settings


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset after its answer counts as closing)."""
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except ConnectionResetError:
        pass
    return answer


# the console pages' shared `ark up` (one for the session) and Chromium (one per module)
from tests.console_pages import chromium, console_ark  # noqa: E402, F401
