"""`ark doctor` against a live embedded ARK with the real Prometheus, node_exporter and Alertmanager it runs:
every check that applies passes; then things are broken one by one (Prometheus stopped, a certificate
expired, a port bound publicly, a model removed, the config corrupted) and each is reported with its fix.
The checks' own logic is tested on a machine of the test's making too."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from ark.config import load_settings
from ark.doctor.checks import Doctor, Probes, Result, worst
from ark.edge.audit import Auditor, Problem
from ark.edge.ports import port_map
from tests.conftest import MASTER_KEY, ArkProcess, monitoring_env, start_ark, stop_ark, wait_until
from tests.test_monitoring_live import certificate

MASTER = {"Authorization": f"Bearer {MASTER_KEY}"}
MONITORED = all(shutil.which(t) for t in ("prometheus", "prometheus-node-exporter", "prometheus-alertmanager"))


def by_check(results: list[Result]) -> dict[str, Result]:
    return {r.check: r for r in results}


def test_the_checks_read_the_machine_they_are_given(tmp_path: Path) -> None:
    config = tmp_path / "ark.toml"
    config.write_text('master_key = "sk-example-key-0000"\n[engines.embedded]\nkind = "embedded"\n')
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)  # readable by everyone
    settings = load_settings(config_path=config, data_dir=data, env={})
    status = {
        "gateway": {"url": "http://127.0.0.1:4000/health/ready", "running": False, "ready": False},
        "engines": [{"name": "embedded", "kind": "embedded", "up": True, "error": None}],
        "models": [],
    }

    def http(url: str) -> tuple[int, bytes] | None:
        if url.endswith("/api/v1/targets?state=active"):
            targets = [{"labels": {"job": "ark"}, "health": "up"}, {"labels": {"job": "node"}, "health": "down"}]
            return 200, orjson.dumps({"data": {"activeTargets": targets}})
        if url.endswith("/api/v1/rules"):
            return 200, orjson.dumps({"data": {"groups": [{"rules": [{}, {}]}]}})
        return None

    def command(argv: Any) -> subprocess.CompletedProcess[str] | None:
        return subprocess.CompletedProcess(argv, 0, '{"runc":{}}', "") if argv[0] == "docker" else None

    probes = Probes(
        http=http,
        command=command,
        audit=lambda s, b: [Problem("cert-expiring", "warning", "x.pem", "expires in 3 days")],
        status=lambda s: status,
        nvml=lambda: "535.104.05",
    )
    found = by_check(Doctor(settings, probes).run())
    assert found["master-key"].status == "fail" and "example" in found["master-key"].evidence
    assert found["data"].status == "fail" and "chmod 0711" in found["data"].fix
    assert found["gateway"].status == "fail" and "ark up" in found["gateway"].fix
    assert found["prometheus"].status == "fail" and "down: node" in found["prometheus"].evidence
    assert found["certificates"].status == "warn" and found["exposure"].status == "ok"
    assert found["nvidia"].status == "warn" and "570" in found["nvidia"].fix  # an old driver
    assert found["docker"].status == "warn" and "Container Toolkit" in found["docker"].fix  # a GPU, no runtime
    assert found["wireguard"].status == "skipped" and found["nginx"].status == "skipped"
    assert found["backups"].status == "warn"
    assert worst(list(found.values())) == "fail"


@pytest.fixture
def box(tmp_path: Path, tiny_gguf: Path) -> Iterator[tuple[ArkProcess, dict[str, str]]]:
    """A running ARK with its monitoring, an alert receiver, a rendered bundle and a backup."""
    if not MONITORED:
        pytest.skip("prometheus, prometheus-node-exporter or prometheus-alertmanager (Debian) is not installed")
    ports, env = monitoring_env("yes")
    env["ARK_MONITOR_ALERT_WEBHOOK_URL"] = "http://127.0.0.1:9/alerts"
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    data.chmod(0o700)  # as `ark init` makes it
    shutil.copy(tiny_gguf, data / "models" / "tiny.gguf")
    config = (
        f'master_key = "{MASTER_KEY}"\n[gateway]\nlisten = "127.0.0.1:{{PORT}}"\n'
        '[engines.embedded]\nkind = "embedded"\nbundled_model = false\n[models."tiny"]\nengine = "embedded"\n'
    )
    ark = start_ark(config, tmp_path, env={"ARK_DATA_DIR": str(data), **env}, timeout=60)
    env["ARK_DATA_DIR"] = str(data)
    env["ARK_CONSOLE_LISTEN"] = ark.console.removeprefix("http://")
    try:
        base = f"http://127.0.0.1:{ports['prometheus']}"

        def scraped() -> bool:
            answer = httpx.get(base + "/api/v1/targets?state=active", timeout=3).json()
            targets = answer["data"]["activeTargets"]
            return bool(targets) and all(t["health"] == "up" for t in targets)

        assert wait_until(lambda: _answers(base) and scraped(), 90, interval=0.5)
        cli = {**os.environ, **env}
        for argv in (["render", "--only", "monitoring"], ["backup"]):
            done = subprocess.run(
                [sys.executable, "-m", "ark", *argv, "--config", str(ark.config)],
                env=cli,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
        yield ark, env
    finally:
        stop_ark(ark)


def _answers(base: str) -> bool:
    try:
        return httpx.get(base + "/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def doctor(ark: ArkProcess, env: dict[str, str], ours: set[int]) -> dict[str, Result]:
    """The checks, in process, on the live box; `ark audit`'s findings only about the ports this test owns
    (this machine's own listeners and its firewall are not the test's to judge)."""
    settings = load_settings(config_path=ark.config, env=env)

    def audit(settings: Any, bundle: Path) -> list[Problem]:
        problems = Auditor(settings, bundle).run().problems
        return [
            p
            for p in problems
            if p.check.startswith("cert-") or any(p.subject.endswith(f":{port}/tcp") for port in ours)
        ]

    return by_check(Doctor(settings, Probes(audit=audit, nvml=lambda: None)).run())  # (a GPU box: the same)


def free_loopback_only_port(ark: ArkProcess, env: dict[str, str]) -> int:
    ports = port_map(load_settings(config_path=ark.config, env=env))
    for service in ports.services:
        if service.binding == "loopback" and service.proto == "tcp":
            with socket.socket() as probe:
                try:
                    probe.bind(("0.0.0.0", service.port))
                except OSError:
                    continue
            return service.port
    pytest.skip("every loopback-only port of the port map is taken on this machine")


def test_a_healthy_box_passes_and_each_break_is_reported_with_its_fix(box: tuple[ArkProcess, dict[str, str]]) -> None:
    ark, env = box
    exposed = free_loopback_only_port(ark, env)
    found = doctor(ark, env, {exposed})
    assert found["data"].status != "fail"  # (a warning on a disk with under 5 GiB free)
    for name in ("master-key", "database", "gateway", "engine embedded", "model tiny", "prometheus"):
        assert found[name].status == "ok", found[name]
    for name in ("node-exporter", "alerts", "dashboards", "backups", "exposure", "certificates"):
        assert found[name].status == "ok", found[name]
    assert found["nvidia"].status == "skipped" and found["wireguard"].status == "skipped"
    assert not [r for name, r in found.items() if r.status == "fail" and name != "firewall"], found

    # Prometheus stopped (frozen: ARK's supervisor would start a dead one again before the check looks)
    services = httpx.get(ark.url + "/admin/services", headers=MASTER, timeout=5).json()["services"]
    pid = int(next(s["pid"] for s in services if s["name"] == "prometheus"))
    os.kill(pid, signal.SIGSTOP)
    try:
        stopped = doctor(ark, env, {exposed})["prometheus"]
    finally:
        os.kill(pid, signal.SIGCONT)
    assert stopped.status == "fail" and "nothing answers" in stopped.evidence and "ark up" in stopped.fix

    # a certificate that expired
    bundle = ark.data_dir / "deploy" / "certs" / "example.org"
    bundle.mkdir(parents=True)
    certificate(bundle / "fullchain.pem", "example.org", days=-2)
    expired = doctor(ark, env, {exposed})["certificates"]
    assert expired.status == "fail" and "fullchain.pem" in expired.evidence and "certbot" in expired.fix
    (bundle / "fullchain.pem").unlink()

    # a port that must stay on loopback, bound publicly
    with socket.socket() as public:
        public.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        public.bind(("0.0.0.0", exposed))
        public.listen()
        bound = doctor(ark, env, {exposed})["exposure"]
    assert bound.status == "fail" and f"0.0.0.0:{exposed}" in bound.evidence and "127.0.0.1" in bound.fix

    # a configured model whose file is gone
    (ark.data_dir / "models" / "tiny.gguf").unlink()
    gone = doctor(ark, env, {exposed})["model tiny"]
    assert gone.status == "fail" and "no engine serves it" in gone.evidence and "tiny.gguf" in gone.fix

    # a corrupt config: the first thing `ark doctor` reports, exit 1
    broken = ark.config.with_name("broken.toml")
    broken.write_text("master_key = \n[gateway\n")
    done = subprocess.run(
        [sys.executable, "-m", "ark", "doctor", "--json", "--config", str(broken)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = orjson.loads(done.stdout)
    assert done.returncode == 1 and report["status"] == "fail"
    assert report["checks"][0]["check"] == "config" and "broken.toml" in report["checks"][0]["evidence"]


def test_containers_each_running_and_healthy_or_named_with_its_fix(tmp_path: Path) -> None:
    from ark.deploy import compose

    config = tmp_path / "ark.toml"
    config.write_text(
        'master_key = "sk-0123456789abcdef0123"\n[edge]\ndomain = "ark.test"\n'
        '[deploy]\ncontainers = "grafana, n8n, chromadb"\n'
    )
    settings = load_settings(config_path=config, data_dir=tmp_path / "data", env={})
    bundle = tmp_path / "data" / "deploy"
    for name, text in compose.render(settings).items():
        (bundle / name).parent.mkdir(parents=True, exist_ok=True)
        (bundle / name).write_text(text)
    rows = [  # as `docker compose ps --format json` prints them (Compose 2.21+: a line each)
        {"Service": "grafana", "State": "running", "Health": "healthy"},
        {"Service": "n8n", "State": "running", "Health": "unhealthy"},
    ]
    asked: list[list[str]] = []

    def command(argv: Any) -> subprocess.CompletedProcess[str] | None:
        asked.append(list(argv))
        return subprocess.CompletedProcess(argv, 0, "\n".join(orjson.dumps(r).decode() for r in rows), "")

    found = by_check(list(Doctor(settings, Probes(command=command)).containers()))
    file = bundle / compose.COMPOSE_FILE
    assert asked == [["docker", "compose", "-f", str(file), "ps", "--all", "--format", "json"]]
    assert found["container grafana"].status == "ok"
    assert found["container n8n"].status == "fail" and found["container n8n"].evidence == "running, unhealthy"
    assert found["container n8n"].fix == f"docker compose -f {file} logs n8n; then docker compose -f {file} up -d n8n"
    assert found["container chromadb"].status == "fail" and found["container chromadb"].evidence == "absent"

    gone = by_check(list(Doctor(settings, Probes(command=lambda argv: None)).containers()))
    assert gone["containers"].status == "fail" and "install Docker" in gone["containers"].fix
    said = "permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock"
    user = Probes(command=lambda argv: subprocess.CompletedProcess(argv, 1, "", said))
    assert by_check(list(Doctor(settings, user).containers()))["containers"].status == "skipped"  # not root
