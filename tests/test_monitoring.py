"""The monitoring bundle, checked by its own tools: promtool (config, rules, and a unit test for every alert,
firing and quiet), amtool (Alertmanager), and the dashboards' JSON for what Grafana needs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ark.config import Settings, load_settings
from ark.monitor import grafana, prometheus

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian package prometheus) is not installed"
)


def settings(tmp_path: Path, extra: str = "") -> Settings:
    config = tmp_path / "ark.toml"
    config.write_text(f'master_key = "sk-ark-test-0123456789abcdefghijklmnop"\n{extra}')
    return load_settings(config_path=config, data_dir=tmp_path / "data", env={})


def write(files: dict[str, str], root: Path) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@needs_promtool
def test_promtool_accepts_the_config_and_the_rules(tmp_path: Path) -> None:
    write(prometheus.render(settings(tmp_path)), tmp_path / "out")
    checked = run("promtool", "check", "config", str(tmp_path / "out/prometheus/prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = len(prometheus.RECORDING_RULES) + len(prometheus.alerts(settings(tmp_path)))
    assert f"SUCCESS: {rules} rules found" in checked.stdout + checked.stderr
    rules = run("promtool", "check", "rules", str(tmp_path / "out/prometheus/rules/ark.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr


@pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool (Debian package prometheus-alertmanager) is missing")
@pytest.mark.parametrize(
    ("extra", "receivers"),
    [
        ("", set()),
        ('[monitor]\nalert_webhook_url = "http://127.0.0.1:5678/webhook/ark-alerts"\n', {"webhook_configs"}),
        (
            '[monitor]\nalert_email = "ops@example.org"\nsmtp_smarthost = "mail.example.org:587"\n',
            {"email_configs"},
        ),
    ],
)
def test_amtool_accepts_the_alertmanager_config(tmp_path: Path, extra: str, receivers: set[str]) -> None:
    text = prometheus.alertmanager_yml(settings(tmp_path, extra))
    (tmp_path / "alertmanager.yml").write_text(text)
    checked = run("amtool", "check-config", str(tmp_path / "alertmanager.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    receiver = yaml.safe_load(text)["receivers"][0]
    assert set(receiver) - {"name"} == receivers


# One case per alert: series that make it fire, and (other labels) series that keep it quiet.
# promtool evaluates the rules at eval_time over these (values every minute).
GPU = 'instance="box:9835",job="gpu"'
ARK = 'instance="box:4000",job="ark"'
CASES: dict[str, dict[str, Any]] = {
    "GpuTemperatureHigh": {
        "series": [
            (f'ark_gpu_temperature_celsius{{{GPU},gpu="0"}}', "90x10"),
            (f'ark_gpu_temperature_celsius{{{GPU},gpu="1"}}', "60x10"),
        ],
        "fires": [{"instance": "box:9835", "gpu": "0"}],
    },
    "GpuMemoryNearlyFull": {
        "series": [
            (f'ark_gpu_memory_bytes{{{GPU},gpu="0",kind="used"}}', "31x10"),
            (f'ark_gpu_memory_bytes{{{GPU},gpu="0",kind="total"}}', "32x10"),
            (f'ark_gpu_memory_bytes{{{GPU},gpu="1",kind="used"}}', "10x10"),
            (f'ark_gpu_memory_bytes{{{GPU},gpu="1",kind="total"}}', "32x10"),
        ],
        "fires": [{"instance": "box:9835", "gpu": "0"}],
    },
    "ModelOffloadedToCpu": {
        "series": [
            (f'ark_model_offloaded_total{{{ARK},model="thinker"}}', "0 0 0 1 1 1 1 1 1 1 1"),
            (f'ark_model_offloaded_total{{{ARK},model="coder"}}', "0x10"),
        ],
        "fires": [{"instance": "box:4000", "model": "thinker"}],
    },
    "EngineDown": {
        "series": [
            (f'ark_engine_up{{{ARK},engine="ollama"}}', "1 1 1 0 0 0 0 0 0 0 0"),
            (f'ark_engine_up{{{ARK},engine="embedded"}}', "1x10"),
        ],
        "fires": [{"instance": "box:4000", "engine": "ollama"}],
    },
    "EngineRestartedRepeatedly": {
        "series": [
            (f'ark_engine_restarts_total{{{ARK},engine="ollama"}}', "0 1 2 3 4 4 4 4 4 4 4"),
            (f'ark_engine_restarts_total{{{ARK},engine="embedded"}}', "0 1 1 1 1 1 1 1 1 1 1"),
        ],
        "fires": [{"instance": "box:4000", "engine": "ollama"}],
    },
    "EngineWorkerCrashing": {
        "series": [
            (f'ark_engine_crashes_total{{{ARK},engine="embedded"}}', "0 1 2 3 3 3 3 3 3 3 3"),
            (f'ark_engine_crashes_total{{{ARK},engine="other"}}', "0 0 1 1 2 2 2 2 2 2 2"),
        ],
        "fires": [{"instance": "box:4000", "engine": "embedded"}],
    },
    "GpuQueueWaitHigh": {
        "series": [  # every wait above 30 s: p95 is in the 60-120 bucket
            (f'ark_queue_wait_seconds_bucket{{{ARK},le="30"}}', "0x30"),
            (f'ark_queue_wait_seconds_bucket{{{ARK},le="120"}}', "0+10x30"),
            (f'ark_queue_wait_seconds_bucket{{{ARK},le="+Inf"}}', "0+10x30"),
        ],
        "fires": [{"instance": "box:4000"}],
        "eval_time": "25m",
    },
    "ApiErrorRateHigh": {
        "series": [
            (f'ark_requests_total{{{ARK},model="m",status="200"}}', "0+60x30"),
            (f'ark_requests_total{{{ARK},model="m",status="502"}}', "0+30x30"),
        ],
        "fires": [{"instance": "box:4000"}],
        "eval_time": "25m",
    },
    "KeyBudgetNearlySpent": {
        "series": [
            (f'ark_budget_remaining{{{ARK},key_alias="alice"}}', "50 50 5x8"),
            (f'ark_budget_max{{{ARK},key_alias="alice"}}', "100x10"),
            (f'ark_budget_remaining{{{ARK},key_alias="bob"}}', "50x10"),
            (f'ark_budget_max{{{ARK},key_alias="bob"}}', "100x10"),
        ],
        "fires": [{"instance": "box:4000", "key_alias": "alice"}],
    },
    "DataDiskNearlyFull": {
        "series": [
            ('node_filesystem_avail_bytes{instance="box:9100",job="node",fstype="ext4",mountpoint="MOUNT"}', "10x30"),
            ('node_filesystem_size_bytes{instance="box:9100",job="node",fstype="ext4",mountpoint="MOUNT"}', "100x30"),
            ('node_filesystem_avail_bytes{instance="box:9100",job="node",fstype="ext4",mountpoint="/other"}', "1x30"),
            ('node_filesystem_size_bytes{instance="box:9100",job="node",fstype="ext4",mountpoint="/other"}', "100x30"),
        ],
        "fires": [{"instance": "box:9100", "mountpoint": "MOUNT"}],  # the data volume only
        "eval_time": "20m",
    },
    "CertificateExpiringSoon": {
        "series": [  # at t=0 the time is 0: expiries are seconds from then
            (f'ark_certificate_expiry_timestamp_seconds{{{ARK},name="chat.example.org"}}', f"{5 * 86400}x100"),
            (f'ark_certificate_expiry_timestamp_seconds{{{ARK},name="llm.example.org"}}', f"{60 * 86400}x100"),
        ],
        "fires": [{"instance": "box:4000", "name": "chat.example.org"}],
        "eval_time": "90m",
    },
    "ScrapeTargetDown": {
        "series": [
            ('up{instance="box:9100",job="node"}', "1 1 0 0 0 0 0 0 0 0"),
            ('up{instance="box:4000",job="ark"}', "1x10"),
        ],
        "fires": [{"job": "node", "instance": "box:9100"}],
    },
}


@needs_promtool
def test_every_alert_fires_where_it_should_and_nowhere_else(tmp_path: Path) -> None:
    config = settings(tmp_path)
    mount = prometheus.mount_point(config.data_dir)
    alerts = {a.name: a for a in prometheus.alerts(config)}
    assert set(alerts) == set(CASES), "every alert needs a case"
    tests = []
    for name, case in CASES.items():
        fires = [{k: v.replace("MOUNT", mount) for k, v in labels.items()} for labels in case["fires"]]
        series = [{"series": s.replace("MOUNT", mount), "values": v} for s, v in case["series"]]
        expected = [
            {
                "exp_labels": {**labels, "severity": alerts[name].severity},
                "exp_annotations": None,
            }
            for labels in fires
        ]
        eval_time = case.get("eval_time", "10m")
        tests.append(
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": eval_time, "alertname": name, "exp_alerts": expected},
                    {"eval_time": "0m", "alertname": name, "exp_alerts": []},  # nothing fires before the data says so
                ],
            }
        )
    write(prometheus.render(config), tmp_path / "out")
    rules = tmp_path / "out/prometheus/rules/ark.yml"
    # promtool compares annotations exactly: drop them from the rules under test (they are checked above)
    loaded = yaml.safe_load(rules.read_text())
    for group in loaded["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules.write_text(yaml.safe_dump(loaded))
    for test in tests:
        for case in test["alert_rule_test"]:
            for alert in case["exp_alerts"]:
                alert.pop("exp_annotations")
    unit = tmp_path / "out/prometheus/ark_test.yml"
    unit.write_text(yaml.safe_dump({"rule_files": ["rules/ark.yml"], "evaluation_interval": "1m", "tests": tests}))
    result = run("promtool", "test", "rules", str(unit))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_alerts_carry_a_summary_and_a_runbook_and_the_configured_thresholds(tmp_path: Path) -> None:
    config = settings(tmp_path, "[monitor]\ngpu_temperature_c = 80\nbudget_ratio = 0.75\n")
    rules = yaml.safe_load(prometheus.rules_yml(config))
    alerting = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert alerting["GpuTemperatureHigh"]["expr"].endswith("> 80")
    assert alerting["KeyBudgetNearlySpent"]["expr"].endswith("> 0.75")
    for rule in alerting.values():
        assert rule["annotations"]["summary"] and len(rule["annotations"]["runbook"]) > 40
        assert rule["labels"]["severity"] in ("warning", "critical")


def test_dashboards_have_what_grafana_needs(tmp_path: Path) -> None:
    files = grafana.render(settings(tmp_path))
    dashboards = [json.loads(text) for name, text in files.items() if name.endswith(".json")]
    assert {d["title"] for d in dashboards} == {"GPU health", "System", "API usage", "Arbiter"}
    uids = [d["uid"] for d in dashboards]
    assert len(set(uids)) == len(uids) and all(uids)
    for dashboard in dashboards:
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(set(ids)) == len(ids)
        for panel in dashboard["panels"]:
            assert panel["title"] and panel["type"] in ("timeseries", "stat", "bargauge")
            assert panel["datasource"] == {"type": "prometheus", "uid": prometheus.DATASOURCE_UID}
            assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"])
            assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
    datasource = yaml.safe_load(files["grafana/provisioning/datasources/ark.yml"])["datasources"][0]
    assert datasource["uid"] == prometheus.DATASOURCE_UID and datasource["url"] == "http://127.0.0.1:9090"
    provider = yaml.safe_load(files["grafana/provisioning/dashboards/ark.yml"])["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"]


@needs_promtool
def test_ark_render_writes_the_monitoring_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from click.testing import CliRunner

    from ark.cli.main import main

    for var in [v for v in os.environ if v.startswith("ARK_")]:
        monkeypatch.delenv(var)
    config = tmp_path / "ark.toml"
    config.write_text('master_key = "sk-ark-test-0123456789abcdefghijklmnop"\n[edge]\ndomain = "ark.test"\n')
    out = tmp_path / "bundle"
    argv = ["render", "--config", str(config), "--data-dir", str(tmp_path / "data"), "--out", str(out)]
    result = CliRunner().invoke(main, [*argv, "--tls", "self-signed"])
    assert result.exit_code == 0, result.output
    for name in (
        "prometheus/prometheus.yml",
        "prometheus/rules/ark.yml",
        "alertmanager/alertmanager.yml",
        "grafana/provisioning/datasources/ark.yml",
        "grafana/dashboards/ark-gpu.json",
    ):
        assert (out / name).is_file(), name
    checked = run("promtool", "check", "config", str(out / "prometheus/prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    defaults = (out / "prometheus/etc-default-prometheus").read_text()
    assert 'ARGS="--config.file=/etc/prometheus/prometheus.yml --storage.tsdb.retention.time=30d ' in defaults
    assert "--web.listen-address=127.0.0.1:9090" in defaults


def test_certificate_expiry_and_folders_this_user_cannot_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datetime as dt
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from ark.monitor.certificates import CertificateCollector

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chat.example.org")])
    until = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder(name, name, key.public_key(), 1, dt.datetime(2025, 1, 1, tzinfo=dt.UTC), until)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("chat.example.org")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    live = tmp_path / "live"
    (live / "chat").mkdir(parents=True)
    (live / "chat" / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    collector = CertificateCollector(f"{live}/*/cert.pem")

    def values() -> dict[str, float]:
        return {f"{m.name}{sorted(s.labels.items())}": s.value for m in collector.collect() for s in m.samples}

    got = values()
    labels = [("name", "chat.example.org"), ("path", str(live / "chat" / "cert.pem"))]
    assert got[f"ark_certificate_expiry_timestamp_seconds{labels}"] == until.timestamp()
    assert got["ark_certificate_errors[]"] == 0
    # certbot makes live/ 0700 root; a gateway under another user would glob nothing and say nothing
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != live and real_access(path, mode))
    monkeypatch.setattr("glob.glob", lambda pattern: [])
    assert values()["ark_certificate_errors[]"] == 1
