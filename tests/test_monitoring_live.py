"""A real Prometheus (Debian package) scrapes a running ARK, a real node_exporter and the GPU exporter (on a
stand-in for NVML); then every expression of every dashboard panel, recording rule and alert measure is
run through Prometheus' query API and must parse and return series: a panel that can never show data,
or an alert that can never fire, is a bug."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from ark.config import load_settings
from ark.monitor import grafana, prometheus
from ark.monitor.gpu_exporter import GpuExporter, serve
from ark.supervisor import Health, ServiceSpec, Supervisor
from tests.conftest import (
    MASTER_KEY,
    ArkProcess,
    LoopThread,
    embedded_ark,
    free_port,
    monitoring_env,
    start_ark,
    stop_ark,
    wait_until,
)
from tests.fakes.nvml import FakeNvml, Gpu, Process

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("prometheus-node-exporter") is None,
    reason="prometheus / prometheus-node-exporter (Debian packages) are not installed",
)
MASTER = {"Authorization": f"Bearer {MASTER_KEY}"}


@pytest.fixture
def gpu_exporter(loop_thread: LoopThread) -> Iterator[int]:
    port = free_port()
    exporter = GpuExporter(FakeNvml([Gpu(used=9 * 1024**3, processes=[Process(1, 8 * 1024**3)])]))
    stop = asyncio.Event()
    served = asyncio.run_coroutine_threadsafe(serve(exporter, "127.0.0.1", port, stop), loop_thread.loop)
    yield port
    loop_thread.loop.call_soon_threadsafe(stop.set)
    served.result(10)
    exporter.close()


def certificate(path: Path, name: str, days: int) -> Path:
    """A self-signed certificate for ``name`` valid ``days`` from now (negative: expired that long ago)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=max(1, 1 - days)))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def traffic(ark: ArkProcess) -> None:
    """Requests that make every series exist: a budgeted key, a priced model, a stream, an error."""
    key = httpx.post(ark.url + "/key/generate", headers=MASTER, json={"key_alias": "alice", "max_budget": 10})
    assert key.status_code == 200, key.text
    auth = {"Authorization": f"Bearer {key.json()['key']}"}
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    assert httpx.post(ark.api + "/chat/completions", headers=auth, json=body, timeout=60).status_code == 200
    streamed = httpx.post(ark.api + "/chat/completions", headers=auth, json={**body, "stream": True}, timeout=60)
    assert streamed.status_code == 200
    assert httpx.post(ark.api + "/chat/completions", headers=auth, json={**body, "model": "nope"}).status_code == 404


def query(base: str, expr: str) -> tuple[str, int]:
    answer = httpx.get(base + "/api/v1/query", params={"query": expr}, timeout=10).json()
    if answer["status"] != "success":
        return f"error: {answer.get('error')}", 0
    return "ok", len(answer["data"]["result"])


def test_every_dashboard_panel_rule_and_alert_returns_series(
    tmp_path: Path, tiny_gguf: Path, gpu_exporter: int, loop_thread: LoopThread
) -> None:
    ports = {name: free_port() for name in ("prometheus", "node", "alertmanager")}
    certificate(tmp_path / "chat.pem", "chat.example.org", days=5)
    monitor = (
        '[gpu]\ndevice = "virtual"\nmemory_gb = 1\nreserve_gb = 0\n'
        '[models."tiny"]\nmemory_gb = 0.2\ninput_cost_per_token = 0.001\noutput_cost_per_token = 0.002\n'
        f'[monitor]\nembedded = "no"\nscrape_interval_s = 1\nprometheus_listen = "127.0.0.1:{ports["prometheus"]}"\n'
        f'node_exporter_listen = "127.0.0.1:{ports["node"]}"\ngpu_exporter_listen = "127.0.0.1:{gpu_exporter}"\n'
        f'alertmanager_listen = "127.0.0.1:{ports["alertmanager"]}"\ncertificates = "{tmp_path}/*.pem"\n'
    )
    ark = embedded_ark(tmp_path, tiny_gguf, extra=monitor)
    supervisor = Supervisor(tmp_path / "logs")
    base = f"http://127.0.0.1:{ports['prometheus']}"
    try:
        traffic(ark)
        settings = load_settings(config_path=ark.config, env={"ARK_DATA_DIR": str(ark.data_dir)})
        bundle = tmp_path / "bundle"
        for name, text in prometheus.render(settings).items():
            (bundle / name).parent.mkdir(parents=True, exist_ok=True)
            (bundle / name).write_text(text)

        async def start() -> None:
            await supervisor.start(
                ServiceSpec(
                    "node-exporter",
                    [
                        "prometheus-node-exporter",
                        f"--web.listen-address=127.0.0.1:{ports['node']}",
                        "--collector.disable-defaults",
                        *(f"--collector.{c}" for c in ("cpu", "meminfo", "filesystem", "netdev")),
                    ],
                    Health(url=f"http://127.0.0.1:{ports['node']}/metrics"),
                )
            )
            await supervisor.start(
                ServiceSpec(
                    "prometheus",
                    [
                        "prometheus",
                        f"--config.file={bundle / 'prometheus/prometheus.yml'}",
                        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
                    ],
                    Health(url=base + "/-/ready", timeout_s=60),
                )
            )

        loop_thread.run(start(), timeout=90)

        def scraped() -> bool:
            _, count = query(base, "up == 1")
            return count == 4  # ark, node, gpu, prometheus

        assert wait_until(scraped, 30), httpx.get(base + "/api/v1/targets").text
        expressions = [
            (f"dashboard {d.title} / {p.title}", expr)
            for d in grafana.DASHBOARDS
            for p in d.panels
            for expr, _ in p.targets
        ]
        expressions += [(f"recording rule {record}", expr) for record, expr in prometheus.RECORDING_RULES]
        expressions += [(f"alert {a.name}", a.measure) for a in prometheus.alerts(settings)]
        failures: list[str] = []

        def every_expression_has_series() -> bool:  # rate() needs two scrapes; rules are evaluated every second
            failures.clear()
            for where, expr in expressions:
                status, count = query(base, expr)
                if status != "ok" or count == 0:
                    failures.append(f"{where}: {expr} -> {status}, {count} series")
            return not failures

        assert wait_until(every_expression_has_series, 30, interval=1.0), "\n".join(failures)
        days = httpx.get(base + "/api/v1/query", params={"query": prometheus.alerts(settings)[-2].measure}).json()
        assert 4.9 < float(days["data"]["result"][0]["value"][1]) < 5.0  # the certificate's 5 days, read by ARK
    finally:
        loop_thread.run(supervisor.close())
        stop_ark(ark)


def test_ark_up_runs_prometheus_and_node_exporter_and_stops_them(tmp_path: Path, tiny_gguf: Path) -> None:
    ports, env = monitoring_env("auto")
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    shutil.copy(tiny_gguf, data / "models" / "tiny.gguf")
    config = (
        f'master_key = "{MASTER_KEY}"\n[gateway]\nlisten = "127.0.0.1:{{PORT}}"\n'
        '[engines.embedded]\nkind = "embedded"\nbundled_model = false\n'
    )
    ark = start_ark(config, tmp_path, env={"ARK_DATA_DIR": str(data), **env})
    try:

        def services() -> dict[str, dict[str, object]]:
            answer = httpx.get(ark.url + "/admin/services", headers=MASTER, timeout=5).json()
            return {s["name"]: s for s in answer["services"]}

        assert wait_until(lambda: services().get("prometheus", {}).get("state") == "running", 60), services()
        found = services()
        assert found["node-exporter"]["state"] == "running" and found["alertmanager"]["state"] == "running"
        assert found["gpu-exporter"] == {
            "name": "gpu-exporter",
            "state": "absent",
            "why": "no NVIDIA GPU (NVML found none)",
        }
        pids = [int(found[name]["pid"]) for name in ("prometheus", "node-exporter", "alertmanager")]  # type: ignore[call-overload]
        base = f"http://127.0.0.1:{ports['prometheus']}"
        assert wait_until(lambda: query(base, 'up{job="ark"} == 1')[1] == 1, 30)  # it scrapes the gateway
        assert (data / "logs" / "prometheus.log").exists() and (data / "monitor/prometheus/rules/ark.yml").exists()
        status = subprocess.run(
            [sys.executable, "-m", "ark", "status", "--config", str(ark.config)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "ARK_DATA_DIR": str(data)},
        )
        assert "prometheus" in status.stdout and "absent" in status.stdout and "no NVIDIA GPU" in status.stdout, (
            status.stdout
        )
    finally:
        stop_ark(ark)
    assert wait_until(
        lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids), 15
    )
