"""`ark services install n8n`: n8n from the npm registry, pinned, in a folder of its own.

n8n is a Node.js program: ``npm install n8n@VERSION`` into ``SERVICES/n8n-VERSION`` (``[chat]
services_dir``, DATA/services by default; one folder per pinned version, shared by every ARK on the machine
that points there), with the machine's Node.js and npm. The pin is the newest n8n that runs on Node.js 20 (this
project's CI machines'): n8n 2 needs Node.js 24, and the 1.123 releases after this one need isolated-vm 6.2,
a native module that builds only against Node.js 22's V8. The folder counts as installed once a marker file
is written, last; an interrupted install is finished by running it again.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import orjson

from ark.config import Settings
from ark.supervisor.installs import InstallError, Progress, run_step, services_dir

N8N_VERSION = "1.123.50"
NODE_MINIMUM = (20, 19)  # n8n 1.123's engines: node >=20.19 <=24.x
_MARKER = ".ark-installed"
# n8n's nodes take SheetJS (xlsx) as a tarball from cdn.sheetjs.com, not from the registry: a box that reaches
# only package registries cannot fetch it, so the override takes SheetJS's last release on npm instead.
_PACKAGE = {"name": "ark-n8n", "private": True, "overrides": {"xlsx": "npm:xlsx@0.18.5"}}
_EXPECTED_FETCHES = 1520  # registry fetches of a fresh install, for the progress bar (measured: 1,517)


@dataclass(frozen=True)
class Installed:
    root: Path  # SERVICES/n8n-VERSION
    version: str

    @property
    def n8n(self) -> Path:
        return self.root / "node_modules" / "n8n" / "bin" / "n8n"


def location(settings: Settings, version: str = N8N_VERSION) -> Installed:
    return Installed(services_dir(settings) / f"n8n-{version}", version)


def installed(settings: Settings) -> Installed | None:
    place = location(settings)
    return place if (place.root / _MARKER).is_file() and place.n8n.is_file() else None


def node() -> str:
    """The Node.js that runs n8n; InstallError naming what to install when there is none fit for it."""
    found = shutil.which("node")
    if found is None:
        raise InstallError("n8n needs Node.js 20.19 or newer and npm: install them (Debian: apt install nodejs npm)")
    version = subprocess.run([found, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    parts = re.match(r"v(\d+)\.(\d+)", version)
    if parts is None or (int(parts[1]), int(parts[2])) < NODE_MINIMUM or int(parts[1]) > 24:
        raise InstallError(f"n8n {N8N_VERSION} needs Node.js 20.19 to 24, not {version or 'an unknown version'}")
    return found


def install(settings: Settings, progress: Progress) -> Installed:
    """Install (or finish installing) the pinned n8n; returns where it is."""
    node()
    npm = shutil.which("npm")
    if npm is None:
        raise InstallError("n8n is installed with npm: install it (Debian: apt install npm)")
    place = location(settings)
    if installed(settings) is not None:
        progress("already installed", 1, 1)
        return place
    place.root.mkdir(parents=True, exist_ok=True)
    (place.root / "package.json").write_text(orjson.dumps(_PACKAGE, option=orjson.OPT_INDENT_2).decode() + "\n")
    fetched = 0

    def count(line: str) -> None:
        nonlocal fetched
        if "http fetch" in line:
            fetched += 1
            progress(f"fetching packages ({fetched})", fetched, max(fetched, _EXPECTED_FETCHES))

    progress(f"installing n8n {N8N_VERSION}", 0, None)
    argv = [npm, "install", f"n8n@{N8N_VERSION}", "--save-exact", "--omit=dev", "--no-audit", "--no-fund"]
    argv.append("--loglevel=http")
    # no update check, and no analytics from the install scripts of n8n's dependencies (@scarf/scarf)
    env = {"NPM_CONFIG_UPDATE_NOTIFIER": "false", "SCARF_ANALYTICS": "false", "DO_NOT_TRACK": "1"}
    # the install scripts of some 1,500 packages run: none of them sees ARK's secrets
    run_step("npm install n8n", argv, count, env=env, cwd=place.root, inherit=False)
    if not place.n8n.is_file():
        raise InstallError(f"npm finished but {place.n8n} is not there")
    # its database driver is native code, built here when no prebuilt binary could be fetched: it must load
    run_step("checking n8n's SQLite driver", [node(), "-e", "require('sqlite3')"], cwd=place.root, inherit=False)
    (place.root / _MARKER).write_text(N8N_VERSION + "\n")
    progress("installed", 1, 1)
    return place
