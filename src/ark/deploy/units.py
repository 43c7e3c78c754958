"""systemd units for a box that runs ARK as a service (``ark render`` puts them under ``systemd/``):

- ``ark.service``: `ark up` as the unprivileged user ``[deploy] user``, sandboxed (no new privileges, a
  read-only system, writes only to the data directory, no capabilities, only the address families it uses);
- ``ollama.service.d/ark.conf``: a drop-in for Ollama's own unit that makes it listen where ARK's engine
  says, and leaves every load and unload to the GPU arbiter (``OLLAMA_KEEP_ALIVE=-1``: Ollama never unloads
  on a timer; ``OLLAMA_MAX_LOADED_MODELS`` above anything the arbiter would plan: Ollama never evicts on its
  own); its ``OLLAMA_NUM_PARALLEL`` is what ARK sends it at once;
- ``ark-backup.service`` / ``ark-backup.timer``: `ark backup` daily, when ARK makes none itself.

Every path comes from the settings: nothing is guessed at install time.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from urllib.parse import urlsplit

from ark.config import Settings
from ark.config.inference import EngineSettings

MAX_LOADED = 32  # above what the arbiter plans on one box: Ollama's own limit never decides


def _ark() -> str:
    """The `ark` program ARK was installed as (the virtual environment's), for ExecStart."""
    return str(Path(sys.executable).with_name("ark"))


def _environment(settings: Settings) -> list[str]:
    lines = [f"Environment={shlex.quote(f'ARK_DATA_DIR={settings.data_dir}')}"]
    if settings.config_path is not None:
        lines.append(f"Environment={shlex.quote(f'ARK_CONFIG={settings.config_path.absolute()}')}")
    return lines


def ark_service(settings: Settings) -> str:
    user = settings.deploy.user
    writable = [str(settings.data_dir)]
    backups = settings.backups_dir
    if not backups.is_relative_to(settings.data_dir):
        writable.append(str(backups))
    return "\n".join(
        [
            "# ark.service, rendered by `ark render` (docs/deploy.md): ARK's gateway, console and what it runs.",
            "[Unit]",
            "Description=ARK: a sovereign AI platform on one machine",
            "After=network-online.target ollama.service docker.service",
            "Wants=network-online.target",
            "",
            "[Service]",
            "Type=simple",
            f"User={user}",
            f"Group={user}",
            *_environment(settings),
            f"ExecStart={_ark()} up",
            "Restart=on-failure",
            "RestartSec=5",
            "TimeoutStopSec=45",
            "LimitNOFILE=65536",
            "UMask=0077",
            "# sandbox: ARK needs the network, its data directory and the GPU, nothing else",
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=",
            "AmbientCapabilities=",
            "ProtectSystem=strict",
            f"ReadWritePaths={' '.join(writable)}",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectKernelLogs=yes",
            "ProtectControlGroups=yes",
            "ProtectClock=yes",
            "ProtectHostname=yes",
            "RestrictSUIDSGID=yes",
            "RestrictRealtime=yes",
            "RestrictNamespaces=yes",
            "LockPersonality=yes",
            "SystemCallArchitectures=native",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )


def _ollama(settings: Settings) -> EngineSettings | None:
    return next((e for e in settings.engines if e.kind == "ollama"), None)


def ollama_dropin(settings: Settings) -> str | None:
    """The drop-in for Ollama's unit, or None when ARK has no Ollama engine."""
    engine = _ollama(settings)
    if engine is None:
        return None
    parts = urlsplit(engine.url)
    host = f"{parts.hostname or '127.0.0.1'}:{parts.port or 11434}"
    managed = engine.gpu_managed == "yes" or (
        engine.gpu_managed == "auto" and (parts.hostname or "") in ("127.0.0.1", "localhost", "::1")
    )
    keep = "-1" if managed else str(engine.max_keep_alive_s) + "s"
    why = "the GPU arbiter unloads" if managed else f"[engines.{engine.name}] max_keep_alive_s"
    return "\n".join(
        [
            "# /etc/systemd/system/ollama.service.d/ark.conf, rendered by `ark render` (docs/deploy.md)",
            "[Service]",
            f'Environment="OLLAMA_HOST={host}"',
            f'Environment="OLLAMA_KEEP_ALIVE={keep}"',
            f"# ({why}; Ollama never evicts on its own count either)",
            f'Environment="OLLAMA_MAX_LOADED_MODELS={MAX_LOADED}"',
            f'Environment="OLLAMA_NUM_PARALLEL={min(engine.max_parallel, 64)}"',
            "",
        ]
    )


def backup_units(settings: Settings) -> dict[str, str]:
    user = settings.deploy.user
    service = "\n".join(
        [
            "# ark-backup.service, rendered by `ark render`: one `ark backup` (docs/backup.md)",
            "[Unit]",
            "Description=ARK backup",
            "",
            "[Service]",
            "Type=oneshot",
            f"User={user}",
            f"Group={user}",
            *_environment(settings),
            f"ExecStart={_ark()} backup",
            "Nice=10",
            "IOSchedulingClass=idle",
            "UMask=0077",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            f"ReadWritePaths={settings.data_dir}"
            + ("" if settings.backups_dir.is_relative_to(settings.data_dir) else f" {settings.backups_dir}"),
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "",
        ]
    )
    timer = "\n".join(
        [
            "# ark-backup.timer, rendered by `ark render`: daily backups (unless [backup] every_hours does it)",
            "[Unit]",
            "Description=Daily ARK backup",
            "",
            "[Timer]",
            "OnCalendar=daily",
            "RandomizedDelaySec=30min",
            "Persistent=true",
            "",
            "[Install]",
            "WantedBy=timers.target",
            "",
        ]
    )
    return {"ark-backup.service": service, "ark-backup.timer": timer}


def render(settings: Settings) -> dict[str, str]:
    """The units, by their path in the bundle."""
    files = {"systemd/ark.service": ark_service(settings)}
    dropin = ollama_dropin(settings)
    if dropin is not None:
        files["systemd/ollama.service.d/ark.conf"] = dropin
    if settings.backup.every_hours <= 0:
        files.update({f"systemd/{name}": text for name, text in backup_units(settings).items()})
    return files
