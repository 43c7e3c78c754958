"""`ark deploy plan | apply` for real into a throwaway root, twice: the system commands it runs are the
recording stand-ins of tests/fakes/system.py (first on PATH), Ollama is the stand-in of tests/fakes/ollama.py.
Everything else is real: the bundle, the files installed, the folders, the gateway keys in the store, the
firewall's rollback guard (its watcher process included)."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ark.cli.main import main
from ark.deploy import compose, pins
from tests.conftest import MASTER_KEY
from tests.fakes import system
from tests.fakes.ollama import FakeOllama

MUTATING = {"enable", "restart", "reload", "start", "daemon-reload", "pull", "up", "-f", "syncconf", "strip"}


@dataclass
class Box:
    root: Path
    data: Path
    state: Path
    env: dict[str, str]
    fake: FakeOllama
    bin: Path

    def ark(self, runner: CliRunner, *args: str) -> Result:
        """`ark ARGS`; a deploy runs its system commands from the stand-ins (PATH has them too, for the
        firewall's watcher and `ark firewall confirm`)."""
        extra = ["--system-commands", str(self.bin)] if args[0] == "deploy" and self.bin.is_dir() else []
        argv = [*args, *extra, "--data-dir", str(self.data)]
        return runner.invoke(main, argv, env=self.env, catch_exceptions=False)

    def apply(self, runner: CliRunner) -> Result:
        return self.ark(runner, "deploy", "apply", "--root", str(self.root), "--yes")

    def plan(self, runner: CliRunner) -> Result:
        return self.ark(runner, "deploy", "plan", "--root", str(self.root))

    def configure(self, more: str) -> None:
        """Add to ark.toml."""
        config = self.data / "ark.toml"
        config.write_text(config.read_text() + more)

    def calls(self) -> list[list[str]]:
        return system.calls(self.state)

    def changing_calls(self, since: int = 0) -> list[list[str]]:
        """The commands that changed something (not the queries: is-active, ps, inspect, list...)."""
        found = []
        for call in self.calls()[since:]:
            tool, args = call[0], call[1:]
            if tool == "systemctl" and args[:1] and args[0] in ("is-enabled", "is-active"):
                continue
            if tool == "docker" and ("ps" in args or args[:2] == ["image", "inspect"] or "version" in args):
                continue
            if tool == "nft" and ("list" in args or "-c" in args):
                continue
            if tool == "nginx":  # nginx -t only checks
                continue
            found.append(call)
        return found


@pytest.fixture
def box(tmp_path: Path, fake_ollama: FakeOllama) -> Iterator[Box]:
    root, data, state = tmp_path / "root", tmp_path / "data", tmp_path / "system"
    data.mkdir(mode=0o700)
    root.mkdir()
    fake_ollama.remove_model("llama3.2:1b")
    fake_ollama.registry = {"llama3.2:1b", "nomic-embed-text:latest"}
    (data / "ark.toml").write_text(
        f"""master_key = "{MASTER_KEY}"
[edge]
domain = "example.test"
tls = "self-signed"
[deploy]
user = "nobody"
containers = "open-webui, chromadb, comfyui, prometheus, alertmanager, grafana, n8n"
[firewall]
persist_nft_path = "{tmp_path / "persisted" / "nftables.conf"}"
confirm_s = 900
[engines.ollama]
kind = "ollama"
url = "{fake_ollama.url}"
[models."llama3.2:1b"]
engine = "ollama"
[models."nomic-embed-text"]
engine = "ollama"
"""
    )
    bin_dir = tmp_path / "bin"
    env = system.install(bin_dir, state, root)
    env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    the_box = Box(root, data, state, env, fake_ollama, bin_dir)
    yield the_box
    pending = data / "firewall" / "apply" / "pending.json"
    if pending.exists():  # a failed test: stop the watcher now rather than in 15 minutes
        CliRunner().invoke(main, ["firewall", "rollback", "--data-dir", str(data)], env=env)


def test_apply_twice_installs_everything_then_changes_nothing(box: Box, runner: CliRunner) -> None:
    planned = box.plan(runner)
    assert planned.exit_code == 0, planned.output
    assert "install /etc/systemd/system/ark.service" in planned.output
    assert "pull llama3.2:1b" in planned.output
    assert not any(box.root.iterdir()), "a plan installs nothing"
    assert box.changing_calls() == [], "a plan only asks"

    first = box.apply(runner)
    assert first.exit_code == 0, first.output
    assert "Done" in first.output

    # the files, where the system reads them, with their modes
    unit = box.root / "etc/systemd/system/ark.service"
    assert "ExecStart=" in unit.read_text() and "User=nobody" in unit.read_text()
    assert (box.root / "etc/systemd/system/ollama.service.d/ark.conf").is_file()
    assert "nginx.conf" in (box.root / "etc/systemd/system/nginx.service.d/ark.conf").read_text()
    wg = box.root / "etc/wireguard/wg0.conf"
    assert stat.S_IMODE(wg.stat().st_mode) == 0o600 and "PrivateKey" in wg.read_text()
    # the folders: the data directory the ARK user's, 0711
    st = box.data.stat()
    assert stat.S_IMODE(st.st_mode) == 0o711 and st.st_uid == 65534
    for folder in compose.data_dirs(_settings(box)):
        assert folder.path.is_dir() and folder.path.stat().st_uid == folder.uid, folder
    # the gateway keys of the services in containers, private, and not in the compose file
    rendered = (box.data / "deploy" / compose.COMPOSE_FILE).read_text()
    secrets = [p for p in (box.data / "secrets").rglob("*") if p.is_file()]
    assert secrets and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in secrets)
    for path in secrets:
        for line in path.read_text().splitlines():
            value = line.partition("=")[2]
            if len(value) >= 16:
                assert value not in rendered, f"a secret of {path} is in the compose file"
    # the models pulled, each once
    assert {"llama3.2:1b", "nomic-embed-text:latest"} <= set(box.fake.models)
    # the commands, in an order that works: units installed before systemd reloads and starts them
    changing = box.changing_calls()
    assert ["systemctl", "daemon-reload"] in changing
    assert changing.index(["systemctl", "daemon-reload"]) < changing.index(
        ["systemctl", "enable", "--now", "ark.service"]
    )
    assert ["systemctl", "enable", "--now", "nginx.service"] in changing
    assert ["systemctl", "enable", "--now", "wg-quick@wg0.service"] in changing
    compose_file = str(box.data / "deploy" / compose.COMPOSE_FILE)
    pulls = [c[6:] for c in changing if c[:6] == ["docker", "compose", "-f", compose_file, "pull", "--quiet"]]
    builds = [c[5:] for c in changing if c[:5] == ["docker", "compose", "-f", compose_file, "build"]]
    assert pulls == [["alertmanager", "chromadb", "grafana", "n8n", "open-webui", "prometheus"]]  # registries
    assert builds == [["comfyui"]]  # built here, from the bundle's Dockerfile
    ups = [c for c in changing if c[:4] == ["docker", "compose", "-f", compose_file] and c[4] == "up"]
    assert len(ups) == 1
    # the images locked by digest: the compose file now names each by it
    lock = json.loads(compose.images_lock_path(_settings(box)).read_text())
    assert lock and all(digest.startswith("sha256:") for digest in lock.values())
    refs = compose.images(_settings(box))
    pulled = {service: ref for service, ref in refs.items() if service != "comfyui"}
    assert all("@sha256:" in ref for ref in pulled.values()) and "@" not in refs["comfyui"]
    rendered = (box.data / "deploy" / compose.COMPOSE_FILE).read_text()
    assert all(ref in rendered for ref in pulled.values())
    dockerfile = (box.data / "deploy" / "compose" / "comfyui" / "Dockerfile").read_text()
    assert f"FROM {pins.TORCH_IMAGE}@sha256:" in dockerfile  # its base, locked too
    # the firewall: loaded, waiting for its confirmation
    assert system.load(box.state)["nft"] and "table inet ark" in system.load(box.state)["nft"]
    assert "ark firewall confirm" in first.output
    confirmed = box.ark(runner, "firewall", "confirm")
    assert confirmed.exit_code == 0, confirmed.output

    # the second apply: nothing to change, and nothing run that changes anything
    before = len(box.calls())
    second = box.apply(runner)
    assert second.exit_code == 0, second.output
    assert "Nothing to change" in second.output, second.output
    assert box.changing_calls(since=before) == []


def test_a_replaced_file_is_shown_as_a_diff_and_kept(box: Box, runner: CliRunner) -> None:
    target = box.root / "etc/systemd/system/ark.service"
    target.parent.mkdir(parents=True)
    target.write_text("[Service]\nExecStart=/usr/local/bin/old-ark up\n")
    planned = box.plan(runner)
    assert "replace /etc/systemd/system/ark.service" in planned.output
    assert "-ExecStart=/usr/local/bin/old-ark up" in planned.output  # the diff, whole lines
    assert target.read_text().startswith("[Service]\nExecStart=/usr/local/bin/old-ark")

    applied = box.apply(runner)
    assert applied.exit_code == 0, applied.output
    kept = list((box.data / "deploy-backups").rglob("ark.service"))
    assert len(kept) == 1 and "old-ark" in kept[0].read_text()
    assert kept[0].relative_to(box.data / "deploy-backups").parts[1:] == ("etc", "systemd", "system", "ark.service")
    assert "old-ark" not in target.read_text()


def test_a_missing_tool_stops_the_apply_and_names_what_to_install(box: Box, runner: CliRunner) -> None:
    (Path(box.env["PATH"].split(os.pathsep)[0]) / "docker").unlink()
    # docker must not be found further along PATH either
    box.env["PATH"] = os.pathsep.join(
        [p for p in box.env["PATH"].split(os.pathsep) if not (Path(p) / "docker").exists()]
    )
    planned = box.plan(runner)
    assert "missing docker" in planned.output and "docs.docker.com" in planned.output
    applied = box.apply(runner)
    assert applied.exit_code == 1
    assert "step containers needs what is not installed: docker" in applied.output
    # the steps before it are done; the ones after it are not
    assert (box.root / "etc/systemd/system/ark.service").is_file()
    assert system.load(box.state)["nft"] is None


def test_a_model_the_registry_does_not_have_stops_with_ollamas_words(box: Box, runner: CliRunner) -> None:
    box.fake.registry = {"nomic-embed-text:latest"}
    applied = box.apply(runner)
    assert applied.exit_code == 1
    assert "ollama pull llama3.2:1b: pull model manifest: file does not exist" in applied.output


def test_apply_refuses_without_a_terminal_or_yes(box: Box, runner: CliRunner) -> None:
    result = box.ark(runner, "deploy", "apply", "--root", str(box.root))
    assert result.exit_code == 1 and "--yes" in result.output
    assert not any(box.root.iterdir())


def test_dry_run_is_a_plan(box: Box, runner: CliRunner) -> None:
    result = box.ark(runner, "deploy", "apply", "--root", str(box.root), "--dry-run")
    assert result.exit_code == 0 and "changes to make" in result.output
    assert not any(box.root.iterdir()) and box.changing_calls() == []


def _settings(box: Box):  # type: ignore[no-untyped-def]
    from ark.config import load_settings

    return load_settings(data_dir=box.data)


def test_ark_in_its_container_replaces_ark_service(box: Box, runner: CliRunner) -> None:
    first = box.apply(runner)
    assert first.exit_code == 0, first.output
    assert "ark.service" in system.load(box.state)["active"]
    config = box.data / "ark.toml"
    config.write_text(re.sub(r'containers = "[^"]*"', 'containers = "ark, prometheus"', config.read_text()))
    planned = box.plan(runner)
    assert "disable and stop ark.service (ARK runs in its container)" in planned.output
    again = box.apply(runner)
    assert again.exit_code == 0, again.output
    state = system.load(box.state)
    assert "ark.service" not in state["active"] and "ark.service" not in state["enabled"]
    assert sorted(state["running"]) == ["ark", "prometheus"]
    # the data directory stays 0711 (Nginx's workers reach the webroot through it), and stays put
    assert stat.S_IMODE(box.data.stat().st_mode) == 0o711
    third = box.plan(runner)
    assert "Nothing to change" in third.output, third.output


def test_the_wireguard_keys_are_not_in_the_diff(box: Box, runner: CliRunner) -> None:
    target = box.root / "etc/wireguard/wg0.conf"
    target.parent.mkdir(parents=True)
    target.write_text("[Interface]\nPrivateKey = OLD-PRIVATE-KEY-VALUE=\nListenPort = 51000\n")
    planned = box.plan(runner)
    assert "replace /etc/wireguard/wg0.conf" in planned.output
    assert "-ListenPort = 51000" in planned.output and "PrivateKey = (hidden)" in planned.output
    applied = box.apply(runner)
    assert applied.exit_code == 0, applied.output
    new_key = next(line for line in target.read_text().splitlines() if line.startswith("PrivateKey"))
    for output in (planned.output, applied.output):
        assert "OLD-PRIVATE-KEY-VALUE" not in output and new_key.split("=", 1)[1].strip() not in output


def test_what_a_stopped_apply_owes_is_done_by_the_next(box: Box, runner: CliRunner) -> None:
    first = box.apply(runner)
    assert first.exit_code == 0, first.output
    assert box.ark(runner, "firewall", "confirm").exit_code == 0
    # wg0.conf and prometheus.yml change; the models step (before containers and WireGuard) then fails
    box.configure("[wireguard]\nlisten_port = 51999\n[monitor]\nscrape_interval_s = 30\n")
    box.fake.remove_model("llama3.2:1b")
    box.fake.registry = {"nomic-embed-text:latest"}
    stopped = box.apply(runner)
    assert stopped.exit_code == 1 and "ollama pull llama3.2:1b" in stopped.output
    box.fake.registry = {"llama3.2:1b", "nomic-embed-text:latest"}
    before = len(box.calls())
    again = box.apply(runner)
    assert again.exit_code == 0, again.output
    changing = box.changing_calls(since=before)
    compose_file = str(box.data / "deploy" / compose.COMPOSE_FILE)
    assert ["wg", "syncconf", "wg0", "/dev/stdin"] in changing  # the files were installed by the stopped apply
    assert ["docker", "compose", "-f", compose_file, "restart", "prometheus"] in changing
    assert box.ark(runner, "firewall", "confirm").exit_code == 0
    last = box.plan(runner)
    assert "Nothing to change" in last.output, last.output


def test_under_a_root_no_command_runs_without_system_commands(box: Box, runner: CliRunner) -> None:
    """A look into a throwaway root never enables a unit, loads a firewall or pulls on this machine."""
    argv = ["deploy", "apply", "--root", str(box.root), "--yes", "--data-dir", str(box.data)]
    result = runner.invoke(main, argv, env=box.env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert box.calls() == []  # not even a query: the stand-ins are first on PATH, and none ran
    assert (box.root / "etc/systemd/system/ark.service").is_file()  # the files are installed
    # user, services, models, containers, wireguard and firewall: in the plan shown first, and in the apply
    assert result.output.count(f"not run: under --root {box.root} no command runs on this machine") == 2 * 6
    assert set(box.fake.models) == {"nomic-embed-text:latest"}  # nothing pulled


def test_files_of_the_database_made_as_root_are_handed_to_the_ark_user(box: Box, runner: CliRunner) -> None:
    applied = box.apply(runner)
    assert applied.exit_code == 0, applied.output
    assert (box.data / "ark.db").stat().st_uid == 65534  # opened by the secrets step, as root
    assert (box.data / "open-webui.key").stat().st_uid == 65534  # a service key, made by the same step
    # root's: what root's Nginx, Docker and nftables read (whoever writes it runs anything as root)
    assert all(p.stat().st_uid == 0 for p in (box.data / "deploy").rglob("*") if not p.is_symlink())
    assert (box.data / "secrets").stat().st_uid == 0 and (box.data / "deploy-state.json").stat().st_uid == 0


def test_a_file_no_longer_rendered_is_removed_and_its_unit_stopped(box: Box, runner: CliRunner) -> None:
    first = box.apply(runner)
    assert first.exit_code == 0, first.output
    timer = box.root / "etc/systemd/system/ark-backup.timer"
    assert timer.is_file() and "ark-backup.timer" in system.load(box.state)["enabled"]
    box.configure("[backup]\nevery_hours = 6\n")  # ARK makes its own backups now
    again = box.apply(runner)
    assert again.exit_code == 0, again.output
    assert "remove /etc/systemd/system/ark-backup.timer (no longer rendered" in again.output
    assert not timer.exists() and list((box.data / "deploy-backups").rglob("ark-backup.timer"))
    assert "ark-backup.timer" not in system.load(box.state)["enabled"]


def test_an_image_built_here_is_rebuilt_when_its_dockerfile_changes(box: Box, runner: CliRunner) -> None:
    first = box.apply(runner)
    assert first.exit_code == 0, first.output
    dockerfile = "compose/comfyui/Dockerfile"
    assert "build ark-local/comfyui" in first.output
    lock = compose.images_lock_path(_settings(box))
    lock.write_text(lock.read_text().replace(pins.TORCH_IMAGE, "pytorch/pytorch:0.0-gone"))  # its base unlocked
    planned = box.plan(runner)
    assert "write " + dockerfile in planned.output
    assert "rebuild ark-local/comfyui" in planned.output and "pull " not in planned.output
    before = len(box.calls())
    again = box.apply(runner)
    assert again.exit_code == 0, again.output
    compose_file = str(box.data / "deploy" / compose.COMPOSE_FILE)
    assert ["docker", "compose", "-f", compose_file, "build", "comfyui"] in box.changing_calls(since=before)
    last = box.plan(runner)
    assert "Nothing to change" in last.output, last.output


def test_certbots_folders_and_what_links_outside_stay_roots(box: Box, runner: CliRunner, tmp_path: Path) -> None:
    """root's certbot renews from DATA/certbot and runs the hooks its renewal files name; a hard link or a
    symlink in the data directory (the ARK user's) never hands over what it points at."""
    renewal = box.data / "certbot" / "config" / "renewal"
    renewal.mkdir(parents=True)
    (renewal / "chat.example.test.conf").write_text("[renewalparams]\n")  # certbot, run as root, made it
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "shadow").write_text("root's\n")
    os.link(outside / "shadow", box.data / "linked")
    (box.data / "through").symlink_to(outside, target_is_directory=True)
    applied = box.apply(runner)
    assert applied.exit_code == 0, applied.output
    assert (box.data / "ark.db").stat().st_uid == 65534  # what must be handed over still is
    for path in (box.data / "certbot", renewal, renewal / "chat.example.test.conf", outside, outside / "shadow"):
        assert path.stat().st_uid == 0, path


def test_only_a_file_ark_installs_is_ever_removed(box: Box, runner: CliRunner) -> None:
    first = box.apply(runner)
    assert first.exit_code == 0, first.output
    assert box.ark(runner, "firewall", "confirm").exit_code == 0
    own = box.root / "etc/systemd/system/backup-offsite.service"  # the operator's, beside ARK's
    own.write_text("[Service]\nExecStart=/usr/local/bin/offsite\n")
    state_file = box.data / "deploy-state.json"
    state = json.loads(state_file.read_text())
    state["installed"] = [*state["installed"], "/etc/systemd/system/backup-offsite.service"]  # the ARK user's edit
    state_file.write_text(json.dumps(state))
    before = len(box.calls())
    again = box.apply(runner)
    assert again.exit_code == 0, again.output
    assert own.is_file() and "backup-offsite" not in again.output
    assert box.changing_calls(since=before) == []


def test_a_look_under_a_root_runs_nothing_and_leaves_the_record(box: Box, runner: CliRunner, tmp_path: Path) -> None:
    """`--root` without `--system-commands` neither disables a unit on this machine nor records anything: the
    next real apply still restarts what the config change needs."""
    first = box.apply(runner)
    assert first.exit_code == 0, first.output
    assert box.ark(runner, "firewall", "confirm").exit_code == 0
    look_root = tmp_path / "look"
    look_root.mkdir()
    look = ["deploy", "apply", "--root", str(look_root), "--yes", "--data-dir", str(box.data)]
    assert runner.invoke(main, look, env=box.env, catch_exceptions=False).exit_code == 0
    assert (look_root / "etc/systemd/system/ark-backup.timer").is_file()
    box.configure("[backup]\nevery_hours = 6\n")  # the timer is no longer rendered
    recorded, before = (box.data / "deploy-state.json").read_bytes(), len(box.calls())
    result = runner.invoke(main, look, env=box.env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert not (look_root / "etc/systemd/system/ark-backup.timer").exists()
    assert box.calls()[before:] == [], "a look ran a command on this machine"
    assert (box.data / "deploy-state.json").read_bytes() == recorded
    real = box.apply(runner)
    assert real.exit_code == 0, real.output
    changing = box.changing_calls(since=before)
    assert ["systemctl", "disable", "--now", "ark-backup.timer"] in changing
    assert ["systemctl", "restart", "ark.service"] in changing  # ark.toml changed since the last real apply


def test_a_renamed_wireguard_interface_stops_the_old_one(box: Box, runner: CliRunner) -> None:
    first = box.apply(runner)
    assert first.exit_code == 0, first.output
    assert box.ark(runner, "firewall", "confirm").exit_code == 0
    box.configure('[wireguard]\ninterface = "wg1"\n')
    again = box.apply(runner)
    assert again.exit_code == 0, again.output
    assert not (box.root / "etc/wireguard/wg0.conf").exists() and (box.root / "etc/wireguard/wg1.conf").is_file()
    state = system.load(box.state)
    assert "wg-quick@wg1.service" in state["enabled"] and "wg-quick@wg1.service" in state["active"]
    assert "wg-quick@wg0.service" not in state["enabled"] + state["active"]  # its file is gone: it is stopped too
