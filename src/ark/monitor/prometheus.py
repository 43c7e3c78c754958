"""Prometheus' configuration, ARK's alert and recording rules, and Alertmanager's configuration.

Renderers return text (YAML); ``ark render`` and ``ark up`` write it. Every alert is a *measure* (a
PromQL expression that always has series while its target is scraped) compared with a threshold from
``[monitor]``: the tests run each measure against a live Prometheus, so a rule that could never fire
(a misspelt metric, a label that does not exist) fails there, and ``promtool test rules`` checks that
each alert fires, and stays quiet, where it should.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ark.config import Settings
from ark.config.types import Address

RULES_FILE = "rules/ark.yml"
DATASOURCE_UID = "ark-prometheus"


@dataclass(frozen=True)
class Alert:
    name: str
    measure: str  # PromQL with series whenever its target is scraped
    op: str  # ">", "<"
    threshold: float
    for_: str  # how long the condition must hold: "0m", "5m"
    severity: str  # "warning", "critical"
    summary: str
    runbook: str  # what to do, in the alert's annotations

    @property
    def expr(self) -> str:
        return f"{self.measure} {self.op} {self.threshold:g}"


def alerts(settings: Settings) -> list[Alert]:
    m = settings.monitor
    data_mount = mount_point(settings.data_dir)
    disk = f'mountpoint="{data_mount}",fstype!~"tmpfs|ramfs"'
    return [
        Alert(
            "GpuTemperatureHigh",
            'max by (instance, gpu) (ark_gpu_temperature_celsius{job="gpu"})',  # the exporter: one per GPU
            ">",
            m.gpu_temperature_c,
            "5m",
            "warning",
            'GPU {{ $labels.gpu }} on {{ $labels.instance }} is at {{ $value | printf "%.0f" }} °C',
            "Check the fans and the airflow (`nvidia-smi -q -d TEMPERATURE,PERFORMANCE`); a GPU that throttles "
            "answers slower. Lower the power limit (`nvidia-smi -pl`) if it keeps happening.",
        ),
        Alert(
            "GpuMemoryNearlyFull",
            'max by (instance, gpu) (ark_gpu_memory_bytes{job="gpu",kind="used"} / ignoring(kind) '
            'ark_gpu_memory_bytes{job="gpu",kind="total"})',
            ">",
            m.vram_full_ratio,
            "5m",
            "warning",
            "GPU {{ $labels.gpu }} memory is {{ $value | humanizePercentage }} full",
            "`ark gpu status` shows who holds it (models, ComfyUI, memory holds, other processes). Unload idle models "
            "(`ark gpu unload MODEL`), free ComfyUI (`ark gpu free-comfyui`), or lower idle_timeout_s.",
        ),
        Alert(
            "ModelOffloadedToCpu",
            "max by (instance, model) (increase(ark_model_offloaded_total[15m]))",
            ">",
            0,
            "0m",
            "warning",
            "Model {{ $labels.model }} was loaded partly on the CPU",
            "The GPU was short of memory when the model loaded, so the engine put layers on the CPU and the "
            "model answers many times slower. See `ark gpu status`; set [gpu] require_full_gpu = true to refuse "
            "such loads, or give the model less context (num_ctx).",
        ),
        Alert(
            "EngineDown",
            "min by (instance, engine) (ark_engine_up)",
            "<",
            1,
            "2m",
            "critical",
            "Engine {{ $labels.engine }} does not answer",
            "`ark status` shows the engine's error. For Ollama: `systemctl status ollama`, `journalctl -u ollama`.",
        ),
        Alert(
            "EngineRestartedRepeatedly",
            "max by (instance, engine) (increase(ark_engine_restarts_total[1h]))",
            ">",
            2,
            "0m",
            "critical",
            'Engine {{ $labels.engine }} was restarted {{ $value | printf "%.0f" }} times in an hour',
            "The arbiter restarts an engine that stops answering after a load; doing it again and again means "
            "the GPU is short of memory or the engine is broken. Read the gateway's log (`arbiter:` lines) and "
            "the engine's own log; reserve more memory ([gpu] reserve_gb).",
        ),
        Alert(
            "EngineWorkerCrashing",
            "max by (instance, engine) (increase(ark_engine_crashes_total[1h]))",
            ">",
            2,
            "0m",
            "critical",
            'The workers of engine {{ $labels.engine }} crashed {{ $value | printf "%.0f" }} times in an hour',
            "Each crash cost the requests that worker served; ARK restarts workers with a growing pause. The "
            "gateway's log says how each died (`llama.cpp worker ... died of SIGSEGV`) and its last words. "
            "A fault before any answer is often a llama.cpp build this CPU cannot run: set the engine's "
            "cpu_variant to an older one (`haswell`, `x64`); repeated SIGKILLs are usually the OOM killer "
            "(`journalctl -k | grep -i oom`): give the model less context or the box more memory.",
        ),
        Alert(
            "GpuQueueWaitHigh",
            "histogram_quantile(0.95, sum by (instance, le) (rate(ark_queue_wait_seconds_bucket[10m])))",
            ">",
            m.queue_wait_p95_s,
            "10m",
            "warning",
            "Requests wait {{ $value | humanizeDuration }} (p95) for the GPU",
            "Too many models compete for one GPU: `ark gpu status` shows the swaps and the queue. Pin the busiest "
            "model, move a model to another engine, or raise [gpu] max_wait_s to batch more per swap.",
        ),
        Alert(
            "ApiErrorRateHigh",
            '(sum by (instance) (rate(ark_requests_total{status=~"5.."}[5m])) '
            "or sum by (instance) (rate(ark_requests_total[5m])) * 0) "  # 0, not nothing, before the first 5xx
            "/ sum by (instance) (rate(ark_requests_total[5m]))",
            ">",
            m.error_ratio,
            "10m",
            "critical",
            "{{ $value | humanizePercentage }} of API requests fail",
            "The access log (DATA/logs/access.log) names the failing model and engine; `ark status` shows "
            "engines that are down.",
        ),
        Alert(
            "KeyBudgetNearlySpent",
            "max by (instance, key_alias) (1 - ark_budget_remaining / ark_budget_max)",
            ">",
            m.budget_ratio,
            "0m",
            "warning",
            "Key {{ $labels.key_alias }} has spent {{ $value | humanizePercentage }} of its budget",
            "`ark keys info KEY` shows the budget and its period; raise it with `ark keys update KEY "
            "--max-budget N` or let the period roll over.",
        ),
        Alert(
            "DataDiskNearlyFull",
            f"max by (instance, mountpoint) (1 - node_filesystem_avail_bytes{{{disk}}} / "
            f"node_filesystem_size_bytes{{{disk}}})",
            ">",
            m.disk_ratio,
            "15m",
            "warning",
            "The data volume {{ $labels.mountpoint }} is {{ $value | humanizePercentage }} full",
            "Recordings, experiments and models live under the data directory: `du -sh DATA/*`. Old "
            "recordings can go; `ark models list` shows the models.",
        ),
        Alert(
            "CertificateExpiringSoon",
            "min by (instance, name) (ark_certificate_expiry_timestamp_seconds - time()) / 86400",
            "<",
            m.certificate_days,
            "1h",
            "warning",
            'The certificate for {{ $labels.name }} expires in {{ $value | printf "%.0f" }} days',
            "`ark certs renew` (twice a day, docs/security.md) renews at 30 days and reloads nginx; "
            "run it by hand to see certbot's reason when it did not.",
        ),
        Alert(
            "ScrapeTargetDown",
            "min by (job, instance) (up)",
            "<",
            1,
            "2m",
            "critical",
            "{{ $labels.job }} on {{ $labels.instance }} cannot be scraped",
            "The service is down or its port changed: `ark status`, and the service's log under DATA/logs/.",
        ),
    ]


RECORDING_RULES: tuple[tuple[str, str], ...] = (
    ("ark:requests:rate5m", "sum by (model, status) (rate(ark_requests_total[5m]))"),
    ("ark:tokens:rate5m", "sum by (model, kind) (rate(ark_tokens_total[5m]))"),
    (
        "ark:request_duration_seconds:p95_5m",
        "histogram_quantile(0.95, sum by (model, le) (rate(ark_request_duration_seconds_bucket[5m])))",
    ),
    (
        "ark:request_duration_seconds:p50_5m",
        "histogram_quantile(0.5, sum by (model, le) (rate(ark_request_duration_seconds_bucket[5m])))",
    ),
    (
        "ark:time_to_first_token_seconds:p95_5m",
        "histogram_quantile(0.95, sum by (model, le) (rate(ark_time_to_first_token_seconds_bucket[5m])))",
    ),
)


def rules_yml(settings: Settings) -> str:
    groups: list[dict[str, Any]] = [
        {
            "name": "ark-recording",
            "rules": [{"record": record, "expr": expr} for record, expr in RECORDING_RULES],
        },
        {
            "name": "ark-alerts",
            "rules": [
                {
                    "alert": a.name,
                    "expr": a.expr,
                    "for": a.for_,
                    "labels": {"severity": a.severity},
                    "annotations": {"summary": a.summary, "runbook": a.runbook},
                }
                for a in alerts(settings)
            ],
        },
    ]
    return _yaml({"groups": groups})


def scrape_target(address: Address) -> str:
    host = "127.0.0.1" if address.host in ("0.0.0.0", "::", "") else address.host
    return f"{host}:{address.port}"


def prometheus_yml(settings: Settings, *, gpu: bool = True) -> str:
    """Scrape ARK's gateway, node_exporter, the GPU exporter (``gpu``: a box with an NVIDIA GPU) and
    Prometheus itself; alerts go to Alertmanager."""
    m = settings.monitor
    interval = f"{m.scrape_interval_s}s"
    jobs = [
        ("ark", scrape_target(settings.gateway.listen)),
        ("node", scrape_target(m.node_exporter_listen)),
        ("gpu", scrape_target(m.gpu_exporter_listen)),
        ("prometheus", scrape_target(m.prometheus_listen)),
    ]
    if not gpu:  # a target that cannot exist would be a ScrapeTargetDown alert forever
        jobs = [(job, target) for job, target in jobs if job != "gpu"]
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [RULES_FILE],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [scrape_target(m.alertmanager_listen)]}]}]},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]} for job, target in jobs],
    }
    return _yaml(config)


def alertmanager_yml(settings: Settings) -> str:
    """One route to one receiver: the webhook and/or the mail from ``[monitor]`` (none: alerts only show
    in Prometheus and Alertmanager's UI)."""
    m = settings.monitor
    receiver: dict[str, Any] = {"name": "ark"}
    if m.alert_webhook_url:
        receiver["webhook_configs"] = [{"url": m.alert_webhook_url, "send_resolved": True}]
    if m.alert_email:
        receiver["email_configs"] = [{"to": m.alert_email, "send_resolved": True}]
    config: dict[str, Any] = {
        "route": {
            "receiver": "ark",
            "group_by": ["alertname", "instance"],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "4h",
        },
        "receivers": [receiver],
    }
    if m.alert_email:
        config["global"] = {"smtp_smarthost": m.smtp_smarthost, "smtp_from": m.smtp_from or m.alert_email}
        if _loopback(m.smtp_smarthost):
            # Alertmanager requires STARTTLS by default and verifies the certificate: a local relay (exim
            # offers no TLS, postfix a snakeoil certificate) would get no mail, and on loopback TLS protects nothing
            config["global"]["smtp_require_tls"] = False
    return _yaml(config)


def _loopback(host_port: str) -> bool:
    host = host_port.rpartition(":")[0].strip("[]") or host_port
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def debian_defaults(settings: Settings) -> str:
    """``/etc/default/prometheus`` for Debian's prometheus.service (``ExecStart=/usr/bin/prometheus $ARGS``):
    the retention, the loopback address, and the config this bundle puts in /etc/prometheus."""
    m = settings.monitor
    args = (
        "--config.file=/etc/prometheus/prometheus.yml "
        f"--storage.tsdb.retention.time={m.retention} "
        f"--web.listen-address={scrape_target(m.prometheus_listen)}"
    )
    return (
        "# Rendered by ARK (`ark render`): copy to /etc/default/prometheus, with prometheus.yml and rules/ in\n"
        "# /etc/prometheus/, then `systemctl restart prometheus`.\n"
        f'ARGS="{args}"\n'
    )


def render(settings: Settings, *, gpu: bool = True) -> dict[str, str]:
    """The monitoring part of the bundle: relative path -> text."""
    return {
        "prometheus/prometheus.yml": prometheus_yml(settings, gpu=gpu),
        "prometheus/etc-default-prometheus": debian_defaults(settings),
        f"prometheus/{RULES_FILE}": rules_yml(settings),
        "alertmanager/alertmanager.yml": alertmanager_yml(settings),
    }


def mount_point(path: Path) -> str:
    """The mount point holding ``path`` (what node_exporter labels its filesystem with)."""
    current = path.absolute()
    while not current.exists():
        current = current.parent
    while not os.path.ismount(current):
        current = current.parent
    return str(current)


def _yaml(data: Any) -> str:
    header = "# Rendered by ARK from ark.toml (`ark render`); edit the config, not this file.\n"
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120)
