"""`ark deploy plan | apply`: from the config to a running box, step by step, and again without changes.

Each :class:`Step` first says what it would change (:meth:`Step.plan`, which only looks), then does it
(:meth:`Step.apply`). The steps, in the order they run:

1. bundle       `ark render` into DATA/deploy (Let's Encrypt sites only once their certificates exist)
2. user         the system user ARK runs as
3. directories  the data directory and each container's folder, with their owners and modes
4. secrets      the gateway keys of the services in containers and their env files (0600)
5. files        the bundle's files installed where the system reads them, a diff shown first and the file
                that was there kept in DATA/deploy-backups/TIME/
6. services     systemd: daemon-reload, ark.service, the backup timer, Ollama's drop-in, Nginx (after nginx -t)
7. models       each configured Ollama model pulled (a progress bar each)
8. containers   docker compose pull, the images' digests locked, docker compose up -d
9. certificates Let's Encrypt for every site (certbot through the running Nginx)
10. wireguard   the VPN interface up (or its peers synced)
11. firewall    the ruleset loaded with its rollback guard: confirm it from a new SSH session

A second apply finds nothing to change and says so. A step that needs a tool that is not installed stops the
apply and names what to install; the steps before it stay done, and the next apply goes on from there.
"""

from __future__ import annotations

import contextlib
import difflib
import http.client
import json
import os
import pwd
import re
import shutil
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import yaml

import ark
from ark.config import Settings
from ark.config.inference import EngineSettings
from ark.deploy import compose, pins
from ark.deploy.box import Box, DeployError, compose_rows, install_hint
from ark.deploy.compose import DataDir
from ark.edge.acme import Acme, CertbotDirs
from ark.edge.apply import FirewallGuard
from ark.edge.certs import CERTBOT_DIR
from ark.edge.files import PRIVATE, PUBLIC, Files, digest, read_existing, write_atomic, write_tracked
from ark.edge.persist import Persister
from ark.edge.render import RenderContext, default_out, make_context, render_bundle, render_parts

SYSTEMD = "/etc/systemd/system"
STATE_FILE = "deploy-state.json"  # in DATA: what the last apply brought up (the config's and compose file's hash)
BACKUPS_DIR = "deploy-backups"  # in DATA: files an apply replaced, by time
_SECRET_LINE = re.compile(r"^(\s*(?:private|preshared)key\s*=\s*)\S.*?(\r?\n?)$", re.IGNORECASE)


@dataclass(frozen=True)
class Change:
    what: str
    diff: str = ""  # a unified diff, for a file replaced
    argv: tuple[str, ...] = ()  # the command that makes it, for the steps that are commands


@dataclass
class StepResult:
    name: str
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # tools this step needs that are not installed


class Reporter(Protocol):
    def step(self, name: str, title: str) -> None: ...
    def changed(self, change: Change) -> None: ...
    def note(self, text: str) -> None: ...
    def progress(self, task: str, done: int, total: int | None) -> None: ...


@dataclass(frozen=True)
class Install:
    """A file of the bundle and where the system reads it."""

    bundle: str
    target: str
    mode: int = PUBLIC
    dir_mode: int = 0o755  # of its folder, when the apply makes it


def installs(settings: Settings, files: Files) -> list[Install]:
    """The bundle's files that go outside it, those this configuration renders."""
    iface = settings.wireguard.interface
    containerised = "ark" in settings.deploy.containers  # then ARK's own unit is not installed
    table = [
        *([] if containerised else [Install("systemd/ark.service", f"{SYSTEMD}/ark.service")]),
        Install("systemd/ark-backup.service", f"{SYSTEMD}/ark-backup.service"),
        Install("systemd/ark-backup.timer", f"{SYSTEMD}/ark-backup.timer"),
        Install("systemd/ollama.service.d/ark.conf", f"{SYSTEMD}/ollama.service.d/ark.conf"),
        Install("systemd/nginx.service.d/ark.conf", f"{SYSTEMD}/nginx.service.d/ark.conf"),
        Install(f"wireguard/{iface}.conf", f"/etc/wireguard/{iface}.conf", PRIVATE, 0o700),
    ]
    return [entry for entry in table if entry.bundle in files]


def _diff(old: bytes, new: bytes, name: str) -> str:
    try:
        before, after = old.decode().splitlines(keepends=True), new.decode().splitlines(keepends=True)
    except UnicodeDecodeError:
        return f"(binary: {len(old)} -> {len(new)} bytes)\n"
    return "".join(difflib.unified_diff(before, after, f"{name} (now)", f"{name} (rendered)"))


def _redacted(data: bytes) -> bytes:
    """A private file as a diff may show it: its ``PrivateKey`` and ``PresharedKey`` values hidden."""
    lines = data.decode(errors="replace").splitlines(keepends=True)
    return "".join(_SECRET_LINE.sub(r"\1(hidden)\2", line) for line in lines).encode()


class Deploy:
    """One plan or apply of ``settings`` onto ``box``."""

    def __init__(self, settings: Settings, box: Box, reporter: Reporter) -> None:
        self.settings = settings
        self.box = box
        self.report = reporter
        self.data = settings.data_dir
        self.bundle = default_out(settings).absolute()
        self.state = self._load_state()
        # system paths (and bundle parts) this run changes, or would; with those an apply that stopped midway
        # changed, so the restart or sync they owe is still made
        self.touched: set[str] = self._owed()
        self.tls = self._tls()
        self.ctx: RenderContext = make_context(settings, self.bundle, self.tls)
        self.parts = render_parts(self.ctx)
        self.files: Files = {path: spec for part in self.parts.values() for path, spec in part.items()}

    # -- the steps ---------------------------------------------------------------------------------------
    def steps(self) -> list[Step]:
        return [
            BundleStep(self),
            UserStep(self),
            DirectoriesStep(self),
            SecretsStep(self),
            OwnershipStep(self),
            FilesStep(self),
            ServicesStep(self),
            ModelsStep(self),
            ContainersStep(self),
            CertificatesStep(self),
            WireGuardStep(self),
            FirewallStep(self),
        ]

    def plan(self) -> list[StepResult]:
        results = []
        for step in self.steps():
            self.report.step(step.name, step.title)
            result = StepResult(step.name, missing=self.box.missing(*step.tools()) if self._runs(step) else [])
            if self._runs(step):
                result.changes = step.plan()
                result.notes = step.notes
            else:
                result.notes = [self._why_not(step)]
            for change in result.changes:
                self.report.changed(change)
            for note in result.notes:
                self.report.note(note)
            results.append(result)
        return results

    def _owed(self) -> set[str]:
        return {str(item) for item in self.state.get("pending", [])}

    def apply(self) -> list[StepResult]:
        """Each step again, now doing it (after a plan of the same Deploy: what it rendered is what is written)."""
        self.touched = self._owed()
        results = []
        for step in self.steps():
            self.report.step(step.name, step.title)
            if not self._runs(step):
                results.append(StepResult(step.name, notes=[self._why_not(step)]))
                self.report.note(self._why_not(step))
                continue
            missing = self.box.missing(*step.tools())
            if missing:
                what = "; ".join(f"{tool}: {install_hint(tool)}" for tool in missing)
                raise DeployError(f"step {step.name} needs what is not installed: {what}")
            try:
                changes = step.run()
            finally:
                if self.touched:
                    self._save_state()  # a later step that fails leaves what it owes for the next apply
            for change in changes:
                self.report.changed(change)
            for note in step.notes:
                self.report.note(note)
            results.append(StepResult(step.name, changes, list(step.notes)))
        handed = hand_over(self)  # what later steps wrote as root (a re-rendered file, the digest lock...)
        if handed:
            self.report.note(f"handed {len(handed)} files ARK made as root to the user {self.settings.deploy.user}")
        self._save_state(done=True)
        return results

    def _runs(self, step: Step) -> bool:
        return step.applies() and (self.box.run_commands or not step.commands)

    def _why_not(self, step: Step) -> str:
        if not step.applies():
            return step.skipped()
        return f"not run: under --root {self.box.root} no command runs on this machine (see --system-commands)"

    # -- shared -----------------------------------------------------------------------------------------
    def _tls(self) -> str:
        """Let's Encrypt sites need their certificates: until certbot has them, the sites are rendered with
        the local CA's, so Nginx starts and serves the challenges (the certificates step then switches)."""
        tls = self.settings.edge.tls
        if tls == "letsencrypt" and not self.certificates_present():
            return "self-signed"
        return tls

    def certificates_present(self) -> bool:
        live = CertbotDirs.under(self.data).live
        return all((live / name / "fullchain.pem").is_file() for name in Acme(self.settings, self.bundle).names())

    def _load_state(self) -> dict[str, Any]:
        try:
            state = json.loads((self.data / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _save_state(self, *, done: bool = False) -> None:
        if not self.box.run_commands:
            return  # a look into a throwaway root: the record stays the real box's (what it was brought up with)
        if done:
            self.state["config"] = self.config_hash()
            self.state.pop("pending", None)
        else:
            self.state["pending"] = sorted(self.touched)
        write_atomic(self.data / STATE_FILE, json.dumps(self.state, indent=2, sort_keys=True).encode(), PRIVATE)

    def config_hash(self) -> str | None:
        path = self.settings.config_path
        try:
            return digest(path.read_bytes()) if path is not None else None
        except OSError:
            return None

    def backup_replaced(self, target: Path, system_path: str) -> Path:
        """Keep a copy of a file about to be replaced: DATA/deploy-backups/TIME/<its system path>."""
        stamp = datetime.fromtimestamp(self.box.now(), UTC).strftime("%Y%m%dT%H%M%SZ")
        copy = self.data / BACKUPS_DIR / stamp / system_path.lstrip("/")
        n = 1
        while copy.exists():  # two applies in one second: the first copy (the operator's own file) stays
            n += 1
            copy = self.data / BACKUPS_DIR / f"{stamp}-{n}" / system_path.lstrip("/")
        copy.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copy2(target, copy)
        return copy


class Step:
    name = ""
    title = ""
    commands = True  # it runs commands on this machine, or acts on its live services

    def __init__(self, deploy: Deploy) -> None:
        self.d = deploy
        self.settings = deploy.settings
        self.box = deploy.box
        self.notes: list[str] = []

    def applies(self) -> bool:
        return True

    def skipped(self) -> str:
        return "does not apply to this configuration"

    def tools(self) -> tuple[str, ...]:
        return ()

    def plan(self) -> list[Change]:
        raise NotImplementedError

    def apply(self, changes: list[Change]) -> None:
        raise NotImplementedError

    def run(self) -> list[Change]:
        """Apply what the plan finds; returns what was changed."""
        changes = self.plan()
        if changes:
            self.apply(changes)
        return changes


class BundleStep(Step):
    name, title = "bundle", "the bundle `ark render` writes (DATA/deploy)"
    commands = False

    def plan(self) -> list[Change]:
        by_part: dict[str, list[str]] = {}
        for relative, spec in sorted(self.d.files.items()):
            if read_existing(self.d.bundle, relative) != spec.content:
                part = relative.split("/")[0] if "/" in relative else ""
                by_part.setdefault(part, []).append(relative)
                self.d.touched.add(f"bundle:{part}")
        changes = []
        for part, paths in by_part.items():
            if len(paths) <= 3:
                changes += [Change(f"write {path}") for path in paths]
            else:
                changes.append(Change(f"write {part}/ ({len(paths)} files)"))
        if self.d.tls != self.settings.edge.tls:
            self.notes.append("sites rendered with the local CA until Let's Encrypt's certificates exist")
        return changes

    def apply(self, changes: list[Change]) -> None:
        write_tracked(self.d.bundle, self.d.parts)  # what the plan rendered (and showed), not a second render


class UserStep(Step):
    name, title = "user", "the system user ARK runs as ([deploy] user)"

    def tools(self) -> tuple[str, ...]:
        return () if self._exists() else ("useradd",)

    def _exists(self) -> bool:
        return _ark_ids(self.settings) is not None

    def plan(self) -> list[Change]:
        return [] if self._exists() else [Change(f"create the system user {self.settings.deploy.user}")]

    def apply(self, changes: list[Change]) -> None:
        home = str(self.d.data)
        self.box.change("useradd", "--system", "--home-dir", home, "--shell", "/usr/sbin/nologin",
                        "--user-group", self.settings.deploy.user)  # fmt: skip


class DirectoriesStep(Step):
    name, title = "directories", "the data directory and the containers' folders (owner, mode)"
    commands = False

    def _folders(self) -> list[DataDir]:
        # (-1: the user is made by the user step during apply; a plan says so there)
        uid, gid = _ark_ids(self.settings) or (-1, -1)
        found = [DataDir(self.d.data, uid, gid, 0o711)]
        # the "ark" container's entry names the data directory again: one entry a folder, or two modes for
        # it would make a change at every apply (the first holds: Nginx's workers reach the webroot through it)
        found += [d for d in compose.data_dirs(self.settings) if d.path != self.d.data]
        return found

    def plan(self) -> list[Change]:
        changes = []
        for folder in self._folders():
            try:
                st = folder.path.stat()
            except FileNotFoundError:
                changes.append(Change(f"create {folder.path} ({_owner(folder)}, {folder.mode:o})"))
                continue
            wrong = []
            if folder.uid >= 0 and (st.st_uid, st.st_gid) != (folder.uid, folder.gid):
                wrong.append(f"owner {st.st_uid}:{st.st_gid} -> {_owner(folder)}")
            if st.st_mode & 0o7777 != folder.mode:
                wrong.append(f"mode {st.st_mode & 0o7777:o} -> {folder.mode:o}")
            if wrong:
                changes.append(Change(f"fix {folder.path}: {', '.join(wrong)}"))
        return changes

    def apply(self, changes: list[Change]) -> None:
        for folder in self._folders():
            folder.path.mkdir(parents=True, exist_ok=True)
            if folder.uid >= 0:
                os.chown(folder.path, folder.uid, folder.gid)
            folder.path.chmod(folder.mode)


def _owner(folder: DataDir) -> str:
    return f"{folder.uid}:{folder.gid}" if folder.uid >= 0 else "the ARK user"


class SecretsStep(Step):
    name, title = "secrets", "the containers' gateway keys and secrets (DATA/secrets, 0600)"
    commands = False

    def applies(self) -> bool:
        return compose.COMPOSE_FILE in self.d.files

    def skipped(self) -> str:
        return "no services in containers ([deploy] containers)"

    def plan(self) -> list[Change]:
        # a plan makes no key: it names the files the compose file reads that are missing; an apply writes
        # them all (and finds the same content the next time)
        missing = [path for path in env_files(self.d.files[compose.COMPOSE_FILE].content) if not path.is_file()]
        if missing:
            self.d.touched.add("secrets")
        return [Change(f"write {path} (gateway keys, secrets)") for path in missing]

    def run(self) -> list[Change]:
        """Always: a key revoked since the last apply is made again (and the containers updated)."""
        from ark.store import Store

        store = Store.open(self.settings)
        try:
            wanted = compose.secret_files(self.settings, store)
        finally:
            store.close()
        changes = []
        for path, text in sorted(wanted.items()):
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if write_atomic(path, text.encode(), PRIVATE):
                self.d.touched.add("secrets")
                changes.append(Change(f"write {path} (gateway keys, secrets)"))
        return changes


def env_files(compose_file: bytes) -> list[Path]:
    """The env files a compose file reads (absolute paths)."""
    model = yaml.safe_load(compose_file) or {}
    found: list[Path] = []
    for service in (model.get("services") or {}).values():
        entries = service.get("env_file") or []
        for entry in [entries] if isinstance(entries, str | dict) else entries:
            found.append(Path(entry["path"] if isinstance(entry, dict) else entry))
    return sorted(set(found))


# In the data directory, what stays root's: the bundle (root's Nginx, Docker and nftables read it: whoever may
# write it may run anything as root), the containers' secrets, the copies of replaced system files, this file,
# the image lock, the firewall's apply state, certbot's folders (root's certbot renews from them and runs the
# hooks their renewal files name; they hold the sites' private keys); the backups (the backup timer runs as
# root beside containers). The containers' own folders belong to the users their images run as.
ROOTS_OWN = ("deploy", "secrets", BACKUPS_DIR, STATE_FILE, pins.LOCK_FILE, "firewall/apply", CERTBOT_DIR)


def _ark_ids(settings: Settings) -> tuple[int, int] | None:
    try:
        user = pwd.getpwnam(settings.deploy.user)
    except KeyError:
        return None
    return user.pw_uid, user.pw_gid


def _root_owned(d: Deploy) -> Iterator[tuple[Path, str, int, os.stat_result]]:
    """(path, name, fd of its folder, its lstat) for what root owns under the data directory. The data
    directory is the ARK user's, who may swap a folder for a symlink while this runs: each folder is opened
    through its parent's descriptor and never through a link (os.fwalk), each entry is looked at and changed by
    its name in that folder, never followed; a file with another name elsewhere (a hard link: /etc/shadow's?)
    is left alone."""
    data = Path(os.path.abspath(d.data))
    skip = {data / rel for rel in ROOTS_OWN} | {Path(os.path.abspath(d.settings.backups_dir))}
    skip |= {Path(os.path.abspath(f.path)) for f in compose.data_dirs(d.settings) if f.path != d.data}
    top = os.path.realpath(data)  # the data directory itself may be a link (/opt/ark/data -> /srv/ark)
    for folder, dirs, files, fd in os.fwalk(top, follow_symlinks=False):
        relative = os.path.relpath(folder, top)
        here = data if relative == "." else data / relative
        dirs[:] = sorted(name for name in dirs if here / name not in skip)
        for name in [*dirs, *sorted(files)]:
            if here / name in skip:
                continue
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if st.st_uid == 0 and (stat.S_ISDIR(st.st_mode) or st.st_nlink == 1):
                yield here / name, name, fd, st


def root_owned(d: Deploy) -> list[Path]:
    """Files and folders under the data directory that root made (an apply opens ARK's database, writes the
    bundle and the services' keys as root) and ARK, running as its own user, must own."""
    return [path for path, _, _, _ in _root_owned(d)]


def hand_over(d: Deploy) -> list[Path]:
    """Give what root made in the data directory to the ARK user (a group already set, e.g. for Nginx's
    workers, is kept)."""
    ids = _ark_ids(d.settings)
    if ids is None or ids[0] == 0:
        return []
    uid, gid = ids
    handed = []
    for path, name, fd, st in _root_owned(d):
        with contextlib.suppress(FileNotFoundError):
            os.chown(name, uid, gid if st.st_gid == 0 else -1, dir_fd=fd, follow_symlinks=False)
            handed.append(path)
    return handed


class OwnershipStep(Step):
    name, title = "ownership", "ARK's files in its data directory owned by its user"
    commands = False

    def applies(self) -> bool:
        ids = _ark_ids(self.settings)
        return ids is None or ids[0] != 0

    def skipped(self) -> str:
        return "ARK runs as root ([deploy] user)"

    def plan(self) -> list[Change]:
        found = root_owned(self.d)
        user = self.settings.deploy.user
        if not found:
            return []
        shown = ", ".join(str(p.relative_to(self.d.data)) for p in found[:3]) + (", ..." if len(found) > 3 else "")
        return [Change(f"hand {len(found)} files made as root to {user} ({shown})")]

    def run(self) -> list[Change]:
        """Always: the secrets step just now may have made ARK's database as root."""
        handed = hand_over(self.d)
        if not handed:
            return []
        shown = ", ".join(str(p.relative_to(self.d.data)) for p in handed[:3]) + (", ..." if len(handed) > 3 else "")
        return [Change(f"handed {len(handed)} files made as root to {self.settings.deploy.user} ({shown})")]


class FilesStep(Step):
    name, title = "files", "the bundle's files where the system reads them (a copy of what they replace is kept)"
    commands = False

    def _installs(self) -> Iterator[tuple[Install, Path, bytes, bytes | None]]:
        for entry in installs(self.settings, self.d.files):
            target = self.box.path(entry.target)
            content = self.d.files[entry.bundle].content
            try:
                now: bytes | None = target.read_bytes()
            except FileNotFoundError:
                now = None
            yield entry, target, content, now

    def _gone(self) -> list[str]:
        """What an earlier apply installed that this configuration no longer renders (the backup timer once
        ARK makes its own backups, ark.service once ARK runs in its container). Only a path ARK installs is
        ever removed, whatever the state file says (the ARK user can replace it: the data directory is its)."""
        current = {entry.target for entry in installs(self.settings, self.d.files)}
        recorded = self.d.state.get("installed", [])
        earlier = [str(path) for path in recorded] if isinstance(recorded, list) else []
        return [path for path in earlier if path not in current and _ark_target(path) and self.box.path(path).is_file()]

    def run(self) -> list[Change]:
        changes = super().run()
        self.d.state["installed"] = sorted(entry.target for entry in installs(self.settings, self.d.files))
        return changes

    def plan(self) -> list[Change]:
        changes = []
        for path in self._gone():
            self.d.touched.add(path)
            changes.append(Change(f"remove {path} (no longer rendered; a copy is kept)", argv=("remove", path)))
        for entry, target, content, now in self._installs():
            mode_wrong = now is not None and target.stat().st_mode & 0o7777 != entry.mode
            if now == content and not mode_wrong:
                continue
            self.d.touched.add(entry.target)
            if now is None:
                changes.append(Change(f"install {entry.target} (from {entry.bundle})"))
            elif now == content:
                changes.append(Change(f"fix the mode of {entry.target} to {entry.mode:o}"))
            else:
                private = entry.mode == PRIVATE  # a WireGuard config: its keys are never printed
                diff = (
                    _diff(_redacted(now), _redacted(content), entry.target)
                    if private
                    else _diff(now, content, entry.target)
                )
                changes.append(Change(f"replace {entry.target} (from {entry.bundle})", diff))
        return changes

    def apply(self, changes: list[Change]) -> None:
        for change in changes:
            if change.argv[:1] != ("remove",):
                continue
            path = change.argv[1]
            unit = _unit_of(path)
            if unit is not None and self.box.run_commands:
                self.box.change("systemctl", "disable", "--now", unit)  # stopped before its file goes
            elif unit is not None:
                self.notes.append(f"{unit} not disabled: under --root no command runs on this machine")
            self.notes.append(f"kept the removed {path} as {self.d.backup_replaced(self.box.path(path), path)}")
            self.box.path(path).unlink()
        for entry, target, content, now in self._installs():
            if now is not None and now != content:
                self.notes.append(f"kept the replaced {entry.target} as {self.d.backup_replaced(target, entry.target)}")
            target.parent.mkdir(parents=True, exist_ok=True, mode=entry.dir_mode)
            write_atomic(target, content, entry.mode)


_UNIT_FILES = ("ark.service", "ark-backup.service", "ark-backup.timer")  # what FilesStep may install in SYSTEMD
_DROPINS = ("ollama.service.d/ark.conf", "nginx.service.d/ark.conf")
_WG_CONF = re.compile(r"/etc/wireguard/([A-Za-z0-9_=+.-]{1,15})\.conf")


def _ark_target(path: str) -> bool:
    """Whether ``path`` is one ARK installs (:func:`installs`; a WireGuard config under any interface name)."""
    ours = {f"{SYSTEMD}/{name}" for name in (*_UNIT_FILES, *_DROPINS)}
    return path in ours or _WG_CONF.fullmatch(path) is not None


def _unit_of(path: str) -> str | None:
    """The unit that runs from an installed file: disabled and stopped before the file goes."""
    if path in {f"{SYSTEMD}/{name}" for name in _UNIT_FILES}:
        return Path(path).name
    wg = _WG_CONF.fullmatch(path)
    return f"wg-quick@{wg.group(1)}.service" if wg else None


class ServicesStep(Step):
    name, title = "services", "systemd: ARK, its backup timer, Ollama's settings, Nginx"

    def tools(self) -> tuple[str, ...]:
        return ("systemctl", "nginx")

    def _units(self) -> list[str]:
        units = [] if self._containerised() else ["ark.service"]
        if "systemd/ark-backup.timer" in self.d.files:
            units.append("ark-backup.timer")
        units.append("nginx.service")
        return units

    def _containerised(self) -> bool:
        return "ark" in self.settings.deploy.containers

    def _enabled(self, unit: str) -> bool:
        return self.box.query("systemctl", "is-enabled", "--quiet", unit).returncode == 0

    def _active(self, unit: str) -> bool:
        return self.box.query("systemctl", "is-active", "--quiet", unit).returncode == 0

    def plan(self) -> list[Change]:
        if self.box.missing("systemctl"):
            return []
        touched = self.d.touched
        changes = []
        if self._containerised() and (self._enabled("ark.service") or self._active("ark.service")):
            # two ARKs would fight over the same ports and data: the container is the one now
            stop = ("systemctl", "disable", "--now", "ark.service")
            changes.append(Change("disable and stop ark.service (ARK runs in its container)", argv=stop))
        if any(path.startswith(SYSTEMD) for path in touched):
            changes.append(Change("reload systemd's units", argv=("systemctl", "daemon-reload")))
        if f"{SYSTEMD}/ollama.service.d/ark.conf" in touched and self._active("ollama.service"):
            changes.append(
                Change("restart Ollama (its settings changed)", argv=("systemctl", "restart", "ollama.service"))
            )
        for unit in self._units():
            if not (self._enabled(unit) and self._active(unit)):
                changes.append(Change(f"enable and start {unit}", argv=("systemctl", "enable", "--now", unit)))
            elif unit == "ark.service" and (
                f"{SYSTEMD}/ark.service" in touched or self.d.state.get("config") != self.d.config_hash()
            ):
                changes.append(
                    Change("restart ARK (its unit or ark.toml changed)", argv=("systemctl", "restart", unit))
                )
            elif unit == "nginx.service" and f"{SYSTEMD}/nginx.service.d/ark.conf" in touched:
                changes.append(Change("restart Nginx (its unit changed)", argv=("systemctl", "restart", unit)))
            elif unit == "nginx.service" and touched & {"bundle:nginx", "bundle:certs"}:
                changes.append(Change("reload Nginx (its sites changed)", argv=("systemctl", "reload", unit)))
        return changes

    def apply(self, changes: list[Change]) -> None:
        conf = self.d.bundle / "nginx" / "nginx.conf"
        for change in changes:
            if change.argv[-1] == "nginx.service":
                self.box.change("nginx", "-t", "-q", "-c", str(conf))  # a broken site never replaces a working one
            self.box.change(*change.argv)


class ModelsStep(Step):
    name, title = "models", "the configured Ollama models, pulled"

    def _engine(self) -> EngineSettings | None:
        return next((e for e in self.settings.engines if e.kind == "ollama"), None)

    def applies(self) -> bool:
        return self._engine() is not None and bool(self._wanted())

    def skipped(self) -> str:
        return "no Ollama models configured"

    def _wanted(self) -> list[str]:
        engine = self._engine()
        if engine is None:
            return []
        only = len(self.settings.engines) == 1
        return [m.id for m in self.settings.models if m.engine == engine.name or (m.engine is None and only)]

    def _url(self) -> str:
        engine = self._engine()
        assert engine is not None
        parts = urlsplit(engine.url)
        return f"{parts.scheme}://{parts.netloc}"

    def _installed(self, wait_s: float = 0.0) -> set[str] | None:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                with urllib.request.urlopen(f"{self._url()}/api/tags", timeout=5) as answer:  # noqa: S310 - http(s)
                    data = json.load(answer)
                return {_tagged(str(m.get("name", ""))) for m in data.get("models", [])}
            except (OSError, ValueError):
                if time.monotonic() >= deadline:
                    return None
                time.sleep(1.0)

    def plan(self) -> list[Change]:
        installed = self._installed()
        if installed is None:
            self.notes.append(f"Ollama does not answer at {self._url()}: install it (https://ollama.com/download) "
                              "and start it; the services step restarts it with ARK's settings")  # fmt: skip
            return [Change(f"pull {model}") for model in self._wanted()]
        return [Change(f"pull {model}") for model in self._wanted() if _tagged(model) not in installed]

    def apply(self, changes: list[Change]) -> None:
        if self._installed(wait_s=30.0) is None:
            raise DeployError(
                f"Ollama does not answer at {self._url()}: install it (https://ollama.com/download), then "
                "`systemctl enable --now ollama`, and apply again"
            )
        for change in changes:
            self._pull(change.what.removeprefix("pull "))

    def _pull(self, model: str) -> None:
        body = json.dumps({"model": model, "stream": True}).encode()
        request = urllib.request.Request(f"{self._url()}/api/pull", data=body, method="POST")  # noqa: S310
        request.add_header("Content-Type", "application/json")
        try:
            status = ""
            with urllib.request.urlopen(request, timeout=600) as answer:  # noqa: S310 - http(s)
                for raw in answer:
                    line = json.loads(raw)
                    if "error" in line:
                        raise DeployError(f"ollama pull {model}: {line['error']}")
                    status = str(line.get("status", ""))
                    total = line.get("total")
                    self.d.report.progress(f"{model}: {line.get('status', '')}", line.get("completed", 0), total)
        except urllib.error.HTTPError as exc:
            raise DeployError(
                f"ollama pull {model}: HTTP {exc.code} {exc.read()[:300].decode(errors='replace')}"
            ) from None
        except (OSError, ValueError, http.client.HTTPException) as exc:  # IncompleteRead: the stream was cut
            raise DeployError(f"ollama pull {model}: {exc!r}") from None
        if status != "success":
            raise DeployError(f"ollama pull {model}: the stream ended at {status!r}, not at success: apply again")


def _tagged(name: str) -> str:
    """Ollama's names: ``llama3`` is ``llama3:latest``."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


RESTARTED_ON_BUNDLE = ("prometheus", "alertmanager", "grafana")  # read their bundle folder only at start


class ContainersStep(Step):
    name, title = "containers", "docker compose: images pulled and locked by digest, services up"

    def applies(self) -> bool:
        return compose.COMPOSE_FILE in self.d.files

    def skipped(self) -> str:
        return "no services in containers ([deploy] containers)"

    def tools(self) -> tuple[str, ...]:
        return ("docker",)

    @property
    def file(self) -> Path:
        return self.d.bundle / compose.COMPOSE_FILE

    def _compose(self, *args: str) -> list[str]:
        return ["docker", "compose", "-f", str(self.file), *args]

    def _recipe_now(self, service: str) -> str:
        if service == "comfyui":
            return digest((self.d.bundle / compose.COMFYUI_DOCKERFILE).read_bytes())
        return self._recipe(service)

    def _recipe(self, service: str) -> str:
        """What an image built here is made from: its Dockerfile (ComfyUI's is in the bundle), and for ARK's
        own the lock file and the version (a checkout moved on rebuilds it)."""
        if service == "comfyui":
            return digest(self.d.files[compose.COMFYUI_DOCKERFILE].content)
        root = compose.source_root()
        parts = [root / "Dockerfile", root / "requirements" / "ark.lock"]
        return digest(b"".join(p.read_bytes() for p in parts if p.is_file()) + ark.__version__.encode())

    def _missing_images(self) -> dict[str, str]:
        """Service -> image, for the images not on this machine yet."""

        def absent(ref: str) -> bool:
            return self.box.query("docker", "image", "inspect", "--format", "{{.Id}}", ref).returncode != 0

        return {service: ref for service, ref in compose.images(self.settings).items() if absent(ref)}

    def _running(self) -> dict[str, str]:
        answer = self.box.query(*self._compose("ps", "--all", "--format", "json"))
        if answer.returncode != 0:
            return {}
        return {row.get("Service", ""): row.get("State", "") for row in compose_rows(answer.stdout)}

    def plan(self) -> list[Change]:
        if self.box.missing("docker"):
            return [Change("docker compose: (docker is not installed)")]
        if self.box.query("docker", "compose", "version").returncode != 0:
            self.notes.append(f"docker compose (the plugin): {install_hint('docker')}")
        missing = self._missing_images()
        changes = [
            Change(f"build {ref} (from its Dockerfile)", argv=("build", service))
            if service in pins.BUILT
            else Change(f"pull {ref}", argv=("pull", service))
            for service, ref in sorted(missing.items())
        ]
        built = self.d.state.get("built", {})
        for service, ref in sorted(compose.images(self.settings).items()):
            if service in pins.BUILT and service not in missing and built.get(service) != self._recipe(service):
                changes.append(Change(f"rebuild {ref} (what it is built from changed)", argv=("build", service)))
        running = self._running()
        wanted = sorted(compose.images(self.settings))
        stopped = [service for service in wanted if running.get(service) != "running"]
        rendered = self.d.files[compose.COMPOSE_FILE].content
        if stopped:
            changes.append(Change(f"start {', '.join(stopped)}"))
        elif self.d.state.get("compose") != digest(rendered) or self.d.touched & {"secrets"}:
            changes.append(Change("update the containers (the compose file changed)"))
        # `up` recreates a container only when its compose entry changed: the files it reads from the
        # bundle (prometheus.yml, alert rules, Grafana's provisioning) and ark.toml need a restart
        config_changed = self.d.state.get("config") != self.d.config_hash()
        for service in wanted:
            if service in stopped:
                continue
            if f"bundle:{service}" in self.d.touched and service in RESTARTED_ON_BUNDLE:
                changes.append(Change(f"restart {service} (its configuration changed)", argv=("restart", service)))
            elif service == "ark" and config_changed:
                changes.append(Change("restart ark (ark.toml changed)", argv=("restart", service)))
        return changes

    def apply(self, changes: list[Change]) -> None:
        pulls = [change.argv[1] for change in changes if change.argv[:1] == ("pull",)]
        builds = [change.argv[1] for change in changes if change.argv[:1] == ("build",)]
        if pulls:
            self.d.report.progress(f"docker compose pull {' '.join(pulls)} (the first time takes a while)", 0, None)
            self.box.change(*self._compose("pull", "--quiet", *pulls))
        if builds:
            self.d.report.progress(f"docker compose build {' '.join(builds)} (the first time takes a while)", 0, None)
            self.box.change(*self._compose("build", *builds))
        if pulls or builds:
            self._lock_digests()
        if builds:  # after the lock: ComfyUI's Dockerfile names its base by digest from now on
            recipes = self.d.state.setdefault("built", {})
            for service in builds:
                recipes[service] = self._recipe_now(service)
        self.box.change(*self._compose("up", "--detach", "--remove-orphans", "--wait"))
        self.d.state["compose"] = digest(self.file.read_bytes())
        restarts = [change.argv[1] for change in changes if change.argv[:1] == ("restart",)]
        if restarts:
            self.box.change(*self._compose("restart", *restarts))

    def _lock_digests(self) -> None:
        """The digest each pulled tag resolved to, kept in the lock: the next render names the image by it,
        so a tag moved on the registry is never pulled by surprise."""
        found: dict[str, str] = {}
        refs = [ref for service, ref in compose.images(self.settings).items() if service not in pins.BUILT]
        if "comfyui" in self.settings.deploy.containers:
            refs.append(pins.TORCH_IMAGE)  # the base ComfyUI is built on, pulled by the build
        for ref in refs:
            if "@" in ref:
                continue
            answer = self.box.query("docker", "image", "inspect", "--format", "{{json .RepoDigests}}", ref)
            repo = ref.rsplit(":", 1)[0] if ":" in ref.rsplit("/", 1)[-1] else ref
            try:
                digests = json.loads(answer.stdout) if answer.returncode == 0 else []
            except ValueError:
                digests = []
            for item in digests or []:
                name, _, digest = str(item).partition("@")
                if name == repo and digest.startswith("sha256:"):
                    found[ref] = digest
        if found and compose.record_digests(self.settings, found):
            render_bundle(self.d.ctx, only=["compose"])
            self.notes.append(f"locked {len(found)} image digests in {compose.images_lock_path(self.settings)}")


class CertificatesStep(Step):
    name, title = "certificates", "Let's Encrypt certificates for every site"

    def applies(self) -> bool:
        return self.settings.edge.tls == "letsencrypt"

    def skipped(self) -> str:
        return "[edge] tls is self-signed: the local CA's certificates are in the bundle"

    def tools(self) -> tuple[str, ...]:
        return ("certbot", "nginx")

    def plan(self) -> list[Change]:
        return [] if self.d.certificates_present() else [Change("obtain a certificate for every site (certbot)")]

    def apply(self, changes: list[Change]) -> None:
        acme = Acme(self.settings, self.d.bundle, runner=lambda argv: self.box.run(list(argv)))
        result = acme.obtain(check=True, reload=True)
        self.notes.append(f"certificates for {', '.join(result.names)}")


class WireGuardStep(Step):
    name, title = "wireguard", "the VPN interface"

    @property
    def iface(self) -> str:
        return self.settings.wireguard.interface

    def tools(self) -> tuple[str, ...]:
        return ("systemctl", "wg", "wg-quick")

    def plan(self) -> list[Change]:
        if self.box.missing("systemctl"):
            return []
        unit = f"wg-quick@{self.iface}.service"
        up = self.box.query("systemctl", "is-active", "--quiet", unit).returncode == 0
        enabled = self.box.query("systemctl", "is-enabled", "--quiet", unit).returncode == 0
        if not (up and enabled):
            return [Change(f"enable and start {unit}", argv=("systemctl", "enable", "--now", unit))]
        if f"/etc/wireguard/{self.iface}.conf" in self.d.touched:
            return [Change(f"sync {self.iface}'s peers (wg syncconf)")]
        return []

    def apply(self, changes: list[Change]) -> None:
        for change in changes:
            if change.argv:
                self.box.change(*change.argv)
            else:
                conf = self.box.path(f"/etc/wireguard/{self.iface}.conf")
                stripped = self.box.change("wg-quick", "strip", str(conf)).stdout
                self.box.change("wg", "syncconf", self.iface, "/dev/stdin", stdin=stripped)


class FirewallStep(Step):
    name, title = "firewall", "the default-DROP ruleset, with its rollback guard"

    def tools(self) -> tuple[str, ...]:
        return ("nft",) if self.settings.firewall.backend == "nft" else ("iptables-restore", "ipset")

    def _guard(self) -> FirewallGuard:
        return FirewallGuard(self.d.data, runner=lambda argv: self.box.run(list(argv)))

    def plan(self) -> list[Change]:
        guard = self._guard()
        pending = guard.pending()
        if pending is not None:
            self.notes.append("an apply waits for `ark firewall confirm` (or is rolled back): nothing more now")
            return []
        record = Persister(guard, self.settings.firewall).record()
        names = ("ruleset.nft",) if self.settings.firewall.backend == "nft" else ("ipsets", "rules.v4", "rules.v6")
        rendered = [self.d.files[f"firewall/{name}"].content for name in names]
        if record is not None and record.backend == self.settings.firewall.backend:
            try:
                applied = [guard.snapshot(record.token, name).read_bytes() for name in names]
            except FileNotFoundError:
                applied = []
            if applied == rendered:
                return []
        return [Change(f"load the ruleset ({self.settings.firewall.backend}), rolled back unless confirmed")]

    def apply(self, changes: list[Change]) -> None:
        fw = self.settings.firewall
        guard = self._guard()
        guard.apply(self.d.bundle, fw.backend, fw.confirm_s)
        self.notes.append(
            f"run `ark firewall confirm` from a NEW SSH session within {fw.confirm_s} s: it keeps the rules "
            "(and persists them for boot); otherwise the previous ones come back on their own"
        )


def summary(results: list[StepResult]) -> tuple[int, list[str]]:
    """How many changes, and the tools missing (with what to install)."""
    count = sum(len(r.changes) for r in results)
    missing = sorted({tool for r in results for tool in r.missing})
    return count, [f"{tool}: {install_hint(tool)}" for tool in missing]
