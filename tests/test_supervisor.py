"""The supervisor with real child processes: health checks, restarts with backoff, clean stops, no orphans."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import psutil
import pytest

from ark.supervisor import Health, ServiceSpec, StartFailed, Supervisor
from tests.conftest import free_port, wait_until

PY = sys.executable


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 60))


def http_server(port: int) -> ServiceSpec:
    return ServiceSpec(
        "web",
        [PY, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        Health(url=f"http://127.0.0.1:{port}/", timeout_s=15),
        grace_s=5,
    )


async def until(predicate: Callable[[], bool], within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


def test_a_child_is_started_healthy_logged_and_restarted_when_it_dies(tmp_path: Path) -> None:
    async def main() -> None:
        supervisor = Supervisor(tmp_path / "logs", backoff_s=0.1)
        port = free_port()
        try:
            web = await supervisor.start(http_server(port))
            assert web.state == "running" and web.pid is not None and psutil.pid_exists(web.pid)
            first = web.pid
            os.kill(first, signal.SIGKILL)  # it dies: the supervisor starts it again
            assert await until(lambda: web.state == "running" and web.pid != first)
            assert web.restarts == 1 and web.last_exit == -signal.SIGKILL and web.pauses == [0.1]
            assert await Health(url=f"http://127.0.0.1:{port}/").check()
            status = supervisor.status()[0]
            assert status["name"] == "web" and status["state"] == "running" and status["restarts"] == 1
            log = (tmp_path / "logs" / "web.log").read_text()
            assert log.count("ark supervisor: starting") == 2 and "GET / HTTP" in log  # its own output too
        finally:
            await supervisor.close()
        assert web.state == "stopped" and not psutil.pid_exists(web.pid or 0)

    run(main)


def test_a_crashing_child_is_restarted_with_growing_pauses(tmp_path: Path) -> None:
    async def main() -> None:
        supervisor = Supervisor(tmp_path / "logs", backoff_s=0.05, max_backoff_s=0.2)
        flaky = ServiceSpec("flaky", [PY, "-c", "import time; time.sleep(0.3); raise SystemExit(3)"])
        try:
            service = await supervisor.start(flaky)  # no health check: running once started
            assert await until(lambda: len(service.pauses) >= 4, 20)
            assert service.pauses[:4] == [0.05, 0.1, 0.2, 0.2] and service.last_exit == 3
        finally:
            await supervisor.close()

    run(main)


def test_a_child_that_fails_to_start_is_reported_with_its_log(tmp_path: Path) -> None:
    async def main() -> None:
        supervisor = Supervisor(tmp_path / "logs")
        broken = ServiceSpec(
            "broken",
            [PY, "-c", "print('bad config: listen'); raise SystemExit(2)"],
            Health(tcp=("127.0.0.1", free_port())),
        )
        with pytest.raises(StartFailed, match=r"broken exited with 2 while starting; its log ends:\n(.|\n)*bad config"):
            await supervisor.start(broken)
        silent = ServiceSpec(
            "silent",
            [PY, "-c", "import time; time.sleep(60)"],
            Health(tcp=("127.0.0.1", free_port()), timeout_s=0.5),
            grace_s=1,
        )
        with pytest.raises(StartFailed, match=r"did not become healthy in 0\.5 s"):
            await supervisor.start(silent)
        missing = ServiceSpec("missing", ["/nonexistent/prometheus"])
        with pytest.raises(StartFailed, match="could not start /nonexistent/prometheus"):
            await supervisor.start(missing)
        assert supervisor.status() == []  # nothing half-started is left
        with pytest.raises(ValueError, match="letters, digits"):
            ServiceSpec("../evil", [PY])

    run(main)


STUBBORN = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print("GRANDCHILD" + "-PID=" + str(child.pid) + ".", flush=True)  # (split: the command line is logged too)
    time.sleep(600)
    """
)


def test_stop_escalates_to_sigkill_and_takes_the_childs_children(tmp_path: Path) -> None:
    async def main() -> None:
        supervisor = Supervisor(tmp_path / "logs")
        log = tmp_path / "logs" / "stubborn.log"
        service = await supervisor.start(ServiceSpec("stubborn", [PY, "-c", STUBBORN], grace_s=0.5))
        assert await until(lambda: log.exists() and "GRANDCHILD-PID=" in log.read_text())
        grandchild = int(log.read_text().split("GRANDCHILD-PID=")[1].split(".")[0])
        assert psutil.pid_exists(grandchild)
        await supervisor.close()
        assert service.last_exit == -signal.SIGKILL  # it ignored SIGTERM
        assert await until(lambda: not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == "zombie")

    run(main)


PARENT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from ark.supervisor import ServiceSpec, Supervisor

    async def main():
        supervisor = Supervisor(Path(sys.argv[1]))
        service = await supervisor.start(ServiceSpec("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"]))
        print(service.pid, flush=True)
        await asyncio.sleep(600)

    asyncio.run(main())
    """
)


def test_children_do_not_outlive_a_killed_ark(tmp_path: Path) -> None:
    parent = subprocess.Popen([PY, "-c", PARENT, str(tmp_path / "logs")], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert psutil.pid_exists(child)
        parent.kill()  # SIGKILL: ARK gets no chance to stop anything
        parent.wait(10)
        assert wait_until(lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie", 10)
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


@pytest.mark.parametrize("inherit", [True, False])
def test_a_service_that_does_not_inherit_sees_only_the_base_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inherit: bool
) -> None:
    monkeypatch.setenv("ARK_MASTER_KEY", "sk-secret-of-ark")
    monkeypatch.setenv("OPENAI_API_BASE_URL", "http://stray.example")
    port = free_port()
    dump = tmp_path / "env.txt"
    script = (
        "import os, sys, http.server\n"
        f"open({str(dump)!r}, 'w').write('\\n'.join(sorted(os.environ)))\n"
        f"http.server.test(HandlerClass=http.server.SimpleHTTPRequestHandler, port={port}, bind='127.0.0.1')\n"
    )
    spec = ServiceSpec(
        "env",
        [PY, "-c", script],
        Health(tcp=("127.0.0.1", port), timeout_s=15),
        env={"OWN_SETTING": "1"},
        inherit_env=inherit,
    )

    async def main() -> None:
        supervisor = Supervisor(tmp_path / "logs", backoff_s=0.1)
        try:
            await supervisor.start(spec)
        finally:
            await supervisor.close()

    run(main)
    names = set(dump.read_text().split())
    assert "OWN_SETTING" in names and "PATH" in names
    assert ("ARK_MASTER_KEY" in names) == inherit == ("OPENAI_API_BASE_URL" in names)
