"""systemd units for a box that runs ARK as a service (``ark render`` puts them under ``systemd/``):

- ``ark.service``: `ark up` as the unprivileged user ``[deploy] user``, sandboxed (no new privileges, a
  read-only system, writes only to the data directory, no capabilities, only the address families it uses);
- ``ollama.service.d/ark.conf``: a drop-in for this machine's Ollama unit that makes it listen where ARK's
  engine says, and leaves every load and unload to the GPU arbiter (``OLLAMA_KEEP_ALIVE=-1``: Ollama never
  unloads on a timer; ``OLLAMA_MAX_LOADED_MODELS`` above anything the arbiter would plan: Ollama never evicts
  by its count). ``OLLAMA_NUM_PARALLEL`` stays Ollama's: each slot multiplies a model's context memory, which
  the arbiter plans for;
- ``ark-backup.service`` / ``ark-backup.timer``: `ark backup` daily, when ARK makes none itself;
- ``nginx.service.d/ark.conf``: the distribution's Nginx unit, serving the bundle's nginx.conf.

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


_HOMES = (Path("/home"), Path("/root"), Path("/run/user"))


def _writable(settings: Settings) -> list[str]:
    """The folders ark.service may write: the data directory, and those ARK's services write outside it
    (``-``: a folder not made yet does not stop the unit)."""
    data = settings.data_dir
    found = [str(data)]
    extra: list[str] = [str(settings.backups_dir), settings.images.comfyui_path, settings.chat.services_dir]
    for text in extra:
        path = Path(text).expanduser() if text else None
        if path is not None and not path.is_relative_to(data):
            found.append(f"-{path}")
    return found


def _under_home(settings: Settings) -> bool:
    paths = [settings.data_dir, *([settings.config_path] if settings.config_path else [])]
    return any(Path(p).absolute().is_relative_to(home) for p in paths for home in _HOMES)


def ark_service(settings: Settings) -> str:
    user = settings.deploy.user
    # homes stay out of reach, unless ARK's data or config is in one (a laptop's ~/.local/share/ark): read-only
    # then, with ARK's own folders writable inside
    home = "read-only" if _under_home(settings) else "yes"
    return "\n".join(
        [
            "# ark.service, rendered by `ark render` (docs/deploy.md): ARK's gateway, console and what it runs.",
            "[Unit]",
            "Description=ARK: a sovereign AI platform on one machine",
            "After=network-online.target ollama.service docker.service",
            "Wants=network-online.target",
            "StartLimitIntervalSec=300",  # a config error is not retried forever
            "StartLimitBurst=5",
            "",
            "[Service]",
            "Type=exec",
            f"User={user}",
            *_environment(settings),
            f"Environment={shlex.quote('XDG_CACHE_HOME=' + str(settings.data_dir / 'cache'))}",
            f"ExecStart={_ark()} up",
            "Restart=on-failure",
            "RestartSec=5",
            "TimeoutStopSec=45",
            "KillMode=mixed",  # SIGTERM to ARK alone: it drains requests, then stops what it runs
            "LimitNOFILE=65536",
            "UMask=0077",
            "# sandbox: ARK needs the network, its folders and the GPU (its devices stay reachable), nothing else",
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=",
            "AmbientCapabilities=",
            "ProtectSystem=strict",
            f"ReadWritePaths={' '.join(_writable(settings))}",
            f"ProtectHome={home}",
            "PrivateTmp=yes",
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectKernelLogs=yes",
            "ProtectControlGroups=yes",
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
    """The drop-in for this machine's Ollama unit, or None when ARK's Ollama is not on this machine."""
    engine = _ollama(settings)
    if engine is None:
        return None
    parts = urlsplit(engine.url)
    hostname = parts.hostname or "127.0.0.1"
    if hostname not in ("127.0.0.1", "localhost", "::1"):
        return None  # another machine's Ollama: its unit is not this box's
    host = f"[{hostname}]:{parts.port or 11434}" if ":" in hostname else f"{hostname}:{parts.port or 11434}"
    managed = engine.gpu_managed in ("yes", "auto")  # auto: yes for an Ollama on this machine
    keep = "-1" if managed else f"{engine.max_keep_alive_s}s"
    why = "the GPU arbiter unloads" if managed else f"[engines.{engine.name}] max_keep_alive_s"
    return "\n".join(
        [
            "# /etc/systemd/system/ollama.service.d/ark.conf, rendered by `ark render` (docs/deploy.md)",
            "[Service]",
            f'Environment="OLLAMA_HOST={host}"',
            f'Environment="OLLAMA_KEEP_ALIVE={keep}"',
            f"# ({why}; Ollama never evicts on its own count either)",
            f'Environment="OLLAMA_MAX_LOADED_MODELS={MAX_LOADED}"',
            "",
        ]
    )


def backup_units(settings: Settings) -> dict[str, str]:
    # with services in containers their data folders belong to the users their images run as: only root
    # reads them all (a backup never leaves out a folder it cannot read; it fails)
    user = "root" if settings.deploy.containers else settings.deploy.user
    service = "\n".join(
        [
            "# ark-backup.service, rendered by `ark render`: one `ark backup` (docs/backup.md)",
            "[Unit]",
            "Description=ARK backup",
            "",
            "[Service]",
            "Type=oneshot",
            f"User={user}",
            *_environment(settings),
            f"ExecStart={_ark()} backup",
            "Nice=10",
            "IOSchedulingClass=idle",
            "UMask=0077",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            f"ReadWritePaths={' '.join(_writable(settings))}",
            f"ProtectHome={'read-only' if _under_home(settings) else 'yes'}",
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


def nginx_dropin(settings: Settings, bundle: Path) -> str:
    """The distribution's nginx.service, pointed at the bundle's nginx.conf (``-c``): its pid file and the
    check before each start and reload stay as Debian and Ubuntu ship them."""
    conf = shlex.quote(str(bundle / "nginx" / "nginx.conf"))
    run = settings.edge.nginx_run_dir
    pid = run / "nginx.pid" if run else Path("/run/nginx.pid")  # as the rendered nginx.conf says
    daemon = "-g 'daemon on; master_process on;'"
    return "\n".join(
        [
            "# /etc/systemd/system/nginx.service.d/ark.conf, rendered by `ark render` (docs/deploy.md): Nginx serves",
            "# ARK's sites from the bundle",
            "[Service]",
            f"PIDFile={pid}",
            "ExecStartPre=",
            f"ExecStartPre=/usr/sbin/nginx -t -q -c {conf} {daemon}",
            "ExecStart=",
            f"ExecStart=/usr/sbin/nginx -c {conf} {daemon}",
            "ExecReload=",
            f"ExecReload=/usr/sbin/nginx -c {conf} {daemon} -s reload",
            "ExecStop=",  # Debian's stops the pid of /run/nginx.pid: a graceful stop of this one's
            f"ExecStop=-/sbin/start-stop-daemon --quiet --stop --retry QUIT/5 --pidfile {pid}",
            *([f"RuntimeDirectory={run.relative_to('/run')}"] if run and run.is_relative_to("/run") else []),
            "",
        ]
    )


def render(settings: Settings, bundle: Path | None = None) -> dict[str, str]:
    """The units, by their path in the bundle (``bundle``: where it is written, for Nginx's drop-in)."""
    files = {"systemd/ark.service": ark_service(settings)}
    if settings.edge.domain and bundle is not None:
        files["systemd/nginx.service.d/ark.conf"] = nginx_dropin(settings, bundle)
    dropin = ollama_dropin(settings)
    if dropin is not None:
        files["systemd/ollama.service.d/ark.conf"] = dropin
    if settings.backup.every_hours <= 0:
        files.update({f"systemd/{name}": text for name, text in backup_units(settings).items()})
    return files
