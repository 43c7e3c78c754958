"""What `ark deploy` touches outside ARK's data directory, and how: the commands it runs and the root its
system files go under. Everything outside is reached through a :class:`Box`, so a test gives it a throwaway
root and a PATH of recording stand-ins, and the code under test is the code that runs on a real box.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ark.errors import ArkError

# what to install when a command is missing: the package (Ubuntu 24.04 / Debian 12) or the page
INSTALL_HINTS = {
    "systemctl": "systemd (ARK runs as a systemd service)",
    "nginx": "apt-get install nginx",
    "docker": "Docker Engine with the compose plugin: https://docs.docker.com/engine/install/ubuntu/ "
    "(and the NVIDIA Container Toolkit for ComfyUI: https://docs.nvidia.com/datacenter/cloud-native/"
    "container-toolkit/latest/install-guide.html)",
    "wg": "apt-get install wireguard-tools",
    "wg-quick": "apt-get install wireguard-tools",
    "nft": "apt-get install nftables",
    "iptables-restore": "apt-get install iptables ipset",
    "certbot": "apt-get install certbot",
    "useradd": "apt-get install passwd",
}


class DeployError(ArkError):
    """`ark deploy apply` stopped: a command failed, or a step needs a tool that is not installed. The
    message names the command and what it said, or what to install; steps done before it stay done."""


def run_command(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=900)
    except FileNotFoundError:
        return subprocess.CompletedProcess(list(argv), 127, "", f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(list(argv), 124, "", f"{' '.join(argv)}: no answer in 900 s")


Runner = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass
class Box:
    """The machine being deployed: ``root`` prefixes every system path (``/`` on a real box)."""

    root: Path = Path("/")
    run: Runner = run_command
    which: Callable[[str], str | None] = shutil.which
    now: Callable[[], float] = time.time
    run_commands: bool = True  # False: a --root install with nothing run on this machine

    def path(self, system_path: str | Path) -> Path:
        """Where a system path (``/etc/systemd/system/ark.service``) is under the root."""
        return self.root / str(system_path).lstrip("/")

    def missing(self, *tools: str) -> list[str]:
        return [tool for tool in tools if self.which(tool) is None]

    def query(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """A command that only looks (``systemctl is-active``): its failure is an answer, not an error."""
        return self.run(list(argv))

    def change(self, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """A command that changes the box: its failure stops the deploy with what it said."""
        result = self.run(list(argv), stdin) if stdin is not None else self.run(list(argv))
        if result.returncode != 0:
            said = (result.stderr or result.stdout).strip()[-2000:]
            raise DeployError(f"`{' '.join(argv)}` failed (exit {result.returncode}){': ' + said if said else ''}")
        return result


def install_hint(tool: str) -> str:
    return INSTALL_HINTS.get(tool, f"install {tool}")


def compose_rows(text: str) -> list[dict[str, Any]]:
    """`docker compose ps --format json`: one object a line (Compose 2.21 and later), or one array."""
    rows: list[Any] = []
    for line in text.strip().splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        rows += item if isinstance(item, list) else [item]
    return [row for row in rows if isinstance(row, dict)]
