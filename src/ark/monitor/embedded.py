"""Embedded monitoring: `ark up` runs Prometheus, node_exporter, Alertmanager and the GPU exporter itself.

With ``[monitor] embedded = "auto"`` (the default) each one is started when its program is installed
(Debian packages ``prometheus``, ``prometheus-node-exporter``, ``prometheus-alertmanager``; the GPU
exporter when NVML finds a GPU), on loopback, with the configs rendered into ``DATA/monitor/``, under
ARK's :class:`~ark.supervisor.Supervisor`; one that is missing is reported as absent, never faked.
``"yes"`` makes a missing one an error; ``"no"`` starts none (production runs them as system services).
"""

from __future__ import annotations

import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ark.config import Settings
from ark.edge.files import FileSpec, write_files
from ark.monitor import prometheus
from ark.monitor.prometheus import scrape_target
from ark.supervisor import Health, ServiceSpec, StartFailed, Supervisor

log = logging.getLogger("ark.monitor")


@dataclass(frozen=True)
class Service:
    name: str
    program: str | None  # what must be installed; None: ARK itself
    spec: ServiceSpec | None  # None when it cannot run here (why: ``absent``)
    absent: str = ""


def services(settings: Settings, bundle: Path, *, gpu: bool) -> list[Service]:
    """What embedded monitoring runs, in start order, with what is missing said."""
    m = settings.monitor
    data = settings.data_dir / "monitor"
    out = []

    def program(name: str, package: str, argv: list[str], health: str, service: str) -> Service:
        path = shutil.which(name)
        if path is None:
            return Service(service, name, None, f"not installed (Debian package {package})")
        return Service(service, name, ServiceSpec(service, [path, *argv], Health(url=health, timeout_s=60)))

    node = scrape_target(m.node_exporter_listen)
    out.append(
        program(
            "prometheus-node-exporter",
            "prometheus-node-exporter",
            [f"--web.listen-address={node}"],
            f"http://{node}/metrics",
            "node-exporter",
        )
    )
    if gpu:
        exporter = scrape_target(m.gpu_exporter_listen)
        argv = [sys.executable, "-m", "ark", "gpu", "exporter", "--listen", exporter]
        out.append(
            Service("gpu-exporter", None, ServiceSpec("gpu-exporter", argv, Health(url=f"http://{exporter}/metrics")))
        )
    else:
        out.append(Service("gpu-exporter", None, None, "no NVIDIA GPU (NVML found none)"))
    alertmanager = scrape_target(m.alertmanager_listen)
    out.append(
        program(
            "prometheus-alertmanager",
            "prometheus-alertmanager",
            [
                f"--config.file={bundle / 'alertmanager/alertmanager.yml'}",
                f"--storage.path={data / 'alertmanager'}",
                f"--web.listen-address={alertmanager}",
                "--cluster.listen-address=",  # one box: no gossip port
            ],
            f"http://{alertmanager}/-/ready",
            "alertmanager",
        )
    )
    web = scrape_target(m.prometheus_listen)
    out.append(
        program(
            "prometheus",
            "prometheus",
            [
                f"--config.file={bundle / 'prometheus/prometheus.yml'}",
                f"--storage.tsdb.path={data / 'prometheus'}",
                f"--storage.tsdb.retention.time={m.retention}",
                f"--web.listen-address={web}",
            ],
            f"http://{web}/-/ready",
            "prometheus",
        )
    )
    return out


def nvml_present() -> bool:
    from ark.arbiter.devices import DeviceError
    from ark.monitor.gpu_exporter import GpuExporter

    try:
        GpuExporter().close()
    except DeviceError:
        return False
    return True


async def start(settings: Settings, supervisor: Supervisor) -> list[dict[str, str]]:
    """Start what is installed; returns one line per service for `ark status` (name, state, why)."""
    mode = settings.monitor.embedded
    if mode == "no":
        return []
    bundle = settings.data_dir / "monitor"
    gpu = nvml_present()
    # Prometheus and Alertmanager in containers ([deploy] containers) are theirs: their folders under
    # DATA/monitor belong to the containers' user, and a second one here would take the same port
    contained = {name for name in ("prometheus", "alertmanager") if name in settings.deploy.containers}
    files = prometheus.render(settings, gpu=gpu)
    mine = {name: FileSpec.text(text) for name, text in files.items() if name.split("/", 1)[0] not in contained}
    write_files(bundle, mine)
    report = [
        {"name": name, "state": "absent", "why": "runs in its container ([deploy] containers)"} for name in contained
    ]
    for service in services(settings, bundle, gpu=gpu):
        if service.name in contained:
            continue
        if service.spec is None:
            if mode == "yes" and service.program is not None:
                raise StartFailed(f"[monitor] embedded = yes, but {service.program} is {service.absent}")
            log.info("monitoring: %s is absent: %s", service.name, service.absent)
            report.append({"name": service.name, "state": "absent", "why": service.absent})
            continue
        try:
            await supervisor.start(service.spec)
        except StartFailed as exc:
            if mode == "yes":
                raise
            log.error("monitoring: %s", exc)
            report.append({"name": service.name, "state": "failed", "why": str(exc).splitlines()[0]})
            continue
        report.append({"name": service.name, "state": "running", "why": ""})
    return report
