"""Grafana provisioning (the Prometheus datasource, a dashboard provider) and ARK's four dashboards.

Each dashboard is built from :class:`Panel` values, so the tests can run every panel's expressions
against a live Prometheus: a panel that can never show data is a bug.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml

from ark.config import Settings
from ark.monitor.prometheus import DATASOURCE_UID, scrape_target

DASHBOARDS_DIR = "/var/lib/grafana/dashboards/ark"  # where the provider reads them on the reference box


@dataclass(frozen=True)
class Panel:
    title: str
    targets: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"  # Grafana's unit ids: bytes, celsius, watt, percentunit, s, reqps...
    kind: str = "timeseries"  # or "stat", "bargauge"
    stack: bool = False


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    panels: tuple[Panel, ...]


DASHBOARDS: tuple[Dashboard, ...] = (
    Dashboard(
        "ark-gpu",
        "GPU health",
        (
            Panel("Temperature", (('ark_gpu_temperature_celsius{job="gpu"}', "GPU {{gpu}}"),), "celsius"),
            Panel("Power", (('ark_gpu_power_watts{job="gpu"}', "GPU {{gpu}}"),), "watt"),
            Panel("Utilisation", (('ark_gpu_utilization_ratio{job="gpu"}', "GPU {{gpu}}"),), "percentunit"),
            Panel(
                "Memory by model",
                (("ark_model_memory_bytes * on (instance, model) group_left ark_model_resident", "{{model}}"),),
                "bytes",
                stack=True,
            ),
            Panel(
                "Memory by process",
                (("sum by (process) (ark_gpu_process_memory_bytes)", "{{process}}"),),
                "bytes",
                stack=True,
            ),
            Panel(
                "Memory: used and total",
                (
                    ('ark_gpu_memory_bytes{job="gpu",kind="used"}', "used (GPU {{gpu}})"),
                    ('ark_gpu_memory_bytes{job="gpu",kind="total"}', "total (GPU {{gpu}})"),
                ),
                "bytes",
            ),
        ),
    ),
    Dashboard(
        "ark-system",
        "System",
        (
            Panel(
                "CPU busy",
                (('1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[5m]))', "{{instance}}"),),
                "percentunit",
            ),
            Panel(
                "Memory used",
                (("1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes", "{{instance}}"),),
                "percentunit",
            ),
            Panel(
                "Disk used",
                (
                    (
                        '1 - node_filesystem_avail_bytes{fstype!~"tmpfs|ramfs"} / '
                        'node_filesystem_size_bytes{fstype!~"tmpfs|ramfs"}',
                        "{{mountpoint}}",
                    ),
                ),
                "percentunit",
            ),
            Panel(
                "Network",
                (
                    ('rate(node_network_receive_bytes_total{device!="lo"}[5m])', "in {{device}}"),
                    ('rate(node_network_transmit_bytes_total{device!="lo"}[5m])', "out {{device}}"),
                ),
                "Bps",
            ),
        ),
    ),
    Dashboard(
        "ark-api",
        "API usage",
        (
            Panel("Requests per second", (("sum by (model) (ark:requests:rate5m)", "{{model}}"),), "reqps", stack=True),
            Panel(
                "Errors per second",
                (('sum by (model, status) (ark:requests:rate5m{status=~"[45].."})', "{{model}} {{status}}"),),
                "reqps",
            ),
            Panel(
                "Latency",
                (
                    ("ark:request_duration_seconds:p50_5m", "p50 {{model}}"),
                    ("ark:request_duration_seconds:p95_5m", "p95 {{model}}"),
                ),
                "s",
            ),
            Panel("Time to first token (p95)", (("ark:time_to_first_token_seconds:p95_5m", "{{model}}"),), "s"),
            Panel("Tokens per second", (("sum by (model, kind) (ark:tokens:rate5m)", "{{kind}} {{model}}"),), "short"),
            Panel("Spend by key", (("sum by (key_alias) (increase(ark_spend_total[1h]))", "{{key_alias}}"),), "short"),
            Panel("Budget left", (("ark_budget_remaining / ark_budget_max", "{{key_alias}}"),), "percentunit"),
            Panel("In flight", (("sum(ark_inflight_requests)", "requests"),), "short", kind="stat"),
        ),
    ),
    Dashboard(
        "ark-arbiter",
        "Arbiter",
        (
            Panel("Resident models", (("ark_model_resident", "{{model}}"),), "short", stack=True),
            Panel("Swaps per hour", (("sum(increase(ark_model_swaps_total[1h]))", "swaps"),), "short"),
            Panel("Queue depth", (("ark_queue_depth", "{{model}}"),), "short", stack=True),
            Panel(
                "Queue wait (p95)",
                (("histogram_quantile(0.95, sum by (le) (rate(ark_queue_wait_seconds_bucket[5m])))", "p95"),),
                "s",
            ),
            Panel(
                "Load time (mean)",
                (("rate(ark_model_load_seconds_sum[15m]) / rate(ark_model_load_seconds_count[15m])", "mean"),),
                "s",
            ),
            Panel("Engine restarts", (("increase(ark_engine_restarts_total[1h])", "{{engine}}"),), "short"),
            Panel("Engines up", (("ark_engine_up", "{{engine}}"),), "short", kind="stat"),
        ),
    ),
)


def _panel(panel: Panel, index: int) -> dict[str, Any]:
    width = 12
    return {
        "id": index + 1,
        "type": panel.kind,
        "title": panel.title,
        "datasource": {"type": "prometheus", "uid": DATASOURCE_UID},
        "gridPos": {"h": 8, "w": width, "x": (index % 2) * width, "y": (index // 2) * 8},
        "fieldConfig": {
            "defaults": {
                "unit": panel.unit,
                "custom": {"stacking": {"mode": "normal" if panel.stack else "none"}, "fillOpacity": 10},
            },
            "overrides": [],
        },
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": {"type": "prometheus", "uid": DATASOURCE_UID},
                "expr": expr,
                "legendFormat": legend,
            }
            for i, (expr, legend) in enumerate(panel.targets)
        ],
    }


def dashboard_json(dashboard: Dashboard) -> str:
    model = {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "tags": ["ark"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "panels": [_panel(p, i) for i, p in enumerate(dashboard.panels)],
    }
    return json.dumps(model, indent=2) + "\n"


def render(settings: Settings) -> dict[str, str]:
    """The Grafana part of the bundle: relative path -> text."""
    datasource = {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus",
                "uid": DATASOURCE_UID,
                "type": "prometheus",
                "access": "proxy",
                "url": f"http://{scrape_target(settings.monitor.prometheus_listen)}",
                "isDefault": True,
            }
        ],
    }
    provider = {
        "apiVersion": 1,
        "providers": [
            {
                "name": "ark",
                "folder": "ARK",
                "type": "file",
                "disableDeletion": True,
                "options": {"path": DASHBOARDS_DIR},
            }
        ],
    }
    files = {
        "grafana/provisioning/datasources/ark.yml": yaml.safe_dump(datasource, sort_keys=False),
        "grafana/provisioning/dashboards/ark.yml": yaml.safe_dump(provider, sort_keys=False),
    }
    for dashboard in DASHBOARDS:
        files[f"grafana/dashboards/{dashboard.uid}.json"] = dashboard_json(dashboard)
    return files
