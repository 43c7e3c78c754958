"""The systemd units `ark render` writes: checked by the real `systemd-analyze verify` (in a throwaway root:
nothing of this machine's systemd is touched; any warning fails), and their security properties: ARK runs
unprivileged in a sandbox that writes only its data, Ollama listens on loopback and leaves loads and
unloads to the GPU arbiter."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ark.config import load_settings
from ark.deploy import units
from ark.edge.nginx import render_nginx_conf

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
OLLAMA_UNIT = """[Unit]
Description=Ollama Service
After=network-online.target

[Service]
ExecStart=/usr/local/bin/ollama serve
User=ollama
Group=ollama
Restart=always

[Install]
WantedBy=default.target
"""


def settings(tmp_path: Path, extra: str = "") -> object:
    config = tmp_path / "ark.toml"
    config.write_text('[engines.ollama]\nkind = "ollama"\nurl = "http://127.0.0.1:11434"\n' + extra)
    return load_settings(config_path=config, data_dir=tmp_path / "data", env={})


def fields(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def verify(tmp_path: Path, files: dict[str, str]) -> str:
    """`systemd-analyze verify` of the rendered units in a root of their own; its complaints (empty: none)."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    system = root / "etc/systemd/system"
    system.mkdir(parents=True)
    (system / "ollama.service").write_text(OLLAMA_UNIT)
    for name, text in files.items():
        target = system / name.removeprefix("systemd/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    names = ["ollama.service", *(Path(n).name for n in files if n.endswith((".service", ".timer")))]
    if any("nginx.service.d" in n for n in files):
        names.append("nginx.service")  # the distribution's unit, with ARK's drop-in
    for text in [*files.values(), OLLAMA_UNIT]:  # the programs the units start: stubs inside the root
        for value in fields(text).get("ExecStart", []):
            if not value:
                continue  # a drop-in's empty ExecStart= clears the unit's own
            program = root / value.split()[0].lstrip("/")
            program.parent.mkdir(parents=True, exist_ok=True)
            program.write_text("#!/bin/sh\n")
            program.chmod(0o755)
    done = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", "--man=no", f"--root={root}", *names],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
    )
    return (done.stdout + done.stderr).replace(str(root), "").strip() + ("" if done.returncode == 0 else " (exit)")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze (Debian package systemd) is not installed")
def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    files = units.render(settings(tmp_path))  # type: ignore[arg-type]
    assert set(files) == {
        "systemd/ark.service",
        "systemd/ollama.service.d/ark.conf",
        "systemd/ark-backup.service",
        "systemd/ark-backup.timer",
    }
    assert verify(tmp_path, files) == ""
    broken = {**files, "systemd/ark.service": files["systemd/ark.service"].replace("Restart=", "Restrt=")}
    assert "Restrt" in verify(tmp_path / "again", broken)  # the check can fail: a typo is reported


NGINX_UNIT = Path("/usr/lib/systemd/system/nginx.service")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze (Debian package systemd) is not installed")
@pytest.mark.skipif(not NGINX_UNIT.is_file(), reason="nginx (Debian package nginx) is not installed")
def test_nginx_drop_in_points_the_distributions_unit_at_the_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "data" / "deploy"
    current = settings(tmp_path, '[edge]\ndomain = "ark.test"\n')
    files = units.render(current, bundle)  # type: ignore[arg-type]
    dropin = files["systemd/nginx.service.d/ark.conf"]
    assert verify(tmp_path, files) == ""
    conf = bundle / "nginx" / "nginx.conf"
    service = fields(dropin)
    # each command of Debian's unit cleared, then the same command with -c: start, the check before it, reload
    assert service["ExecStart"] == ["", f"/usr/sbin/nginx -c {conf} -g 'daemon on; master_process on;'"]
    assert service["ExecStartPre"][0] == "" and f"-t -q -c {conf}" in service["ExecStartPre"][1]
    assert service["ExecReload"][0] == "" and service["ExecReload"][1].endswith("-s reload")
    assert service["ExecStop"] == [
        "",
        "-/sbin/start-stop-daemon --quiet --stop --retry QUIT/5 --pidfile /run/nginx.pid",
    ]
    moved = units.nginx_dropin(
        settings(tmp_path, '[edge]\ndomain = "ark.test"\nnginx_run_dir = "/run/ark-nginx"\n'), bundle
    )  # type: ignore[arg-type]
    assert "--pidfile /run/ark-nginx/nginx.pid" in moved and "RuntimeDirectory=ark-nginx" in moved  # remade at boot
    pid = next(line for line in render_nginx_conf(current, bundle).splitlines() if line.startswith("pid "))
    assert service["PIDFile"] == ["/run/nginx.pid"] and "/run/nginx.pid" in pid  # where nginx.conf writes it
    broken = {**files, "systemd/nginx.service.d/ark.conf": dropin.replace("ExecStart=\n", "")}
    assert "ExecStart" in verify(tmp_path / "again", broken)  # two ExecStart= for a forking unit: refused


def test_ark_runs_unprivileged_in_a_sandbox_that_writes_only_its_data(tmp_path: Path) -> None:
    current = settings(tmp_path)
    service = fields(units.ark_service(current))  # type: ignore[arg-type]
    assert service["User"] == ["ark"] and service["KillMode"] == ["mixed"] and service["Type"] == ["exec"]
    assert "ProtectClock" not in service  # (it denies every device but the clock: the GPU's too)
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "RestrictSUIDSGID": "yes",
        "UMask": "0077",
    }.items():
        assert service[key] == [value], key
    assert service["ReadWritePaths"] == [str(tmp_path / "data")]
    assert service["ExecStart"][0].endswith("/ark up")
    assert f"ARK_DATA_DIR={tmp_path / 'data'}" in service["Environment"][0]
    elsewhere = settings(tmp_path, f'[backup]\ndir = "{tmp_path / "offsite"}"\n[deploy]\nuser = "svc-ark"\n')
    service = fields(units.ark_service(elsewhere))  # type: ignore[arg-type]
    assert service["ReadWritePaths"] == [f"{tmp_path / 'data'} -{tmp_path / 'offsite'}"]  # -: not made yet
    assert service["User"] == ["svc-ark"]
    home = Path("/home/someone/.local/share/ark")
    laptop = load_settings(config_path=None, data_dir=home, env={})
    assert fields(units.ark_service(laptop))["ProtectHome"] == ["read-only"]  # ARK's folders writable in it


def test_ollama_listens_where_ark_says_and_leaves_loading_to_the_arbiter(tmp_path: Path) -> None:
    dropin = fields(units.ollama_dropin(settings(tmp_path)) or "")  # type: ignore[arg-type]
    env = dict(value.strip('"').split("=", 1) for value in dropin["Environment"])
    assert env["OLLAMA_HOST"] == "127.0.0.1:11434"
    assert env["OLLAMA_KEEP_ALIVE"] == "-1"  # the arbiter unloads; Ollama's timer never does
    assert int(env["OLLAMA_MAX_LOADED_MODELS"]) > 3  # above Ollama's own 3 per GPU: it never evicts by count
    assert "OLLAMA_NUM_PARALLEL" not in env  # Ollama's own: each slot costs a model's context memory
    remote = tmp_path / "remote"
    remote.mkdir()

    def dropin(url: str, extra: str = "") -> dict[str, str] | None:
        config = remote / "ark.toml"
        config.write_text(f'[engines.ollama]\nkind = "ollama"\nurl = "{url}"\nmax_keep_alive_s = 600\n{extra}')
        text = units.ollama_dropin(load_settings(config_path=config, data_dir=remote / "data", env={}))
        return None if text is None else dict(v.strip('"').split("=", 1) for v in fields(text)["Environment"])

    assert dropin("http://10.0.0.5:11434") is None  # another machine's Ollama: not this box's unit
    assert (dropin("http://127.0.0.1:11434", 'gpu_managed = "no"\n') or {})["OLLAMA_KEEP_ALIVE"] == "600s"
    assert (dropin("http://[::1]:11500") or {})["OLLAMA_HOST"] == "[::1]:11500"
    (remote / "embedded.toml").write_text('[engines.embedded]\nkind = "embedded"\n')
    none = load_settings(config_path=remote / "embedded.toml", data_dir=remote / "data", env={})
    assert units.ollama_dropin(none) is None and "systemd/ollama.service.d/ark.conf" not in units.render(none)
    scheduled = settings(tmp_path, "[backup]\nevery_hours = 24\n")
    assert "systemd/ark-backup.timer" not in units.render(scheduled)  # type: ignore[arg-type]


def test_beside_containers_the_backup_runs_as_root_who_reads_their_folders(tmp_path: Path) -> None:
    beside = settings(tmp_path, '[deploy]\ncontainers = "grafana"\n')
    beside = fields(units.backup_units(beside)["ark-backup.service"])  # type: ignore[arg-type]
    alone = fields(units.backup_units(settings(tmp_path))["ark-backup.service"])  # type: ignore[arg-type]
    assert beside["User"] == ["root"] and alone["User"] == ["ark"]
    assert beside["NoNewPrivileges"] == ["yes"] and beside["ProtectSystem"] == ["strict"]  # still sandboxed
