"""The container bundle: ``compose/docker-compose.yml`` for the services of ``[deploy] containers``.

Open WebUI, ChromaDB, ComfyUI, Prometheus, Grafana and n8n (and ARK itself, optionally) as containers, wired
as embedded mode wires them (the same environment, from the same functions) and held to these rules:

- host networking for every service (``network_mode: host``): Docker's published ports go around the host's
  firewall through iptables rules of its own, so nothing is published and the nftables ruleset stays the one
  truth; each service listens on the loopback address its ARK setting names, as the port map binds it.
  Ollama is not here: it is a systemd service, reached only through the gateway;
- identity headers are trusted from Nginx on this machine only (Open WebUI's forwarded-allow-ips, Grafana's
  auth-proxy whitelist: 127.0.0.1);
- no secret in the file: keys and passwords are in ``DATA/secrets/compose/<service>.env`` (0600), which
  `ark deploy apply` writes from :func:`secret_files`;
- no privilege a service does not need: no capabilities, no new privileges, never privileged, no Docker
  socket, a read-only root where the image allows it, a health check with a program the image has;
- images pinned by version, and by digest once `ark deploy apply` has pulled them (``DATA/images.lock.json``).

ComfyUI has no official image: the bundle has a Dockerfile for it (``compose/comfyui/Dockerfile``), a pinned
ComfyUI release on a pinned PyTorch CUDA image. Renderers return text; nothing here runs Docker.
"""

from __future__ import annotations

import pwd
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

import ark
from ark.auth.signing import b64, derive, load_secret
from ark.chat import webui
from ark.config import Settings
from ark.config.types import Address
from ark.deploy import pins
from ark.deploy.pins import images, images_lock_path, record_digests
from ark.edge.ports import port_map
from ark.errors import ConfigError, EdgeError
from ark.monitor.grafana import DASHBOARDS_DIR
from ark.monitor.prometheus import scrape_target
from ark.store import Store

COMPOSE_FILE = "compose/docker-compose.yml"
COMFYUI_DOCKERFILE = "compose/comfyui/Dockerfile"
README = "README.md"

# The users the images run as: (uid, gid) owning each one's data folder
ROOT = (0, 0)  # Open WebUI's and ChromaDB's images run as root (with no capability, see _hardening)
PROMETHEUS_USER = (65534, 65534)  # nobody:nogroup in prom/prometheus
GRAFANA_USER = (472, 0)  # grafana/grafana: uid 472, group root
N8N_USER = (1000, 1000)  # node in n8nio/n8n
COMFYUI_USER = (10002, 10002)  # made by the bundle's Dockerfile
ARK_USER = (10001, 10001)  # made by the repository's Dockerfile, unless [deploy] user exists here

N8N_PROGRAM = Path("/usr/local/lib/node_modules/n8n/bin/n8n")  # in n8nio/n8n
N8N_KEY_FILE = Path("/tmp/ark/n8n-encryption.key")  # noqa: S108 - inside the container, on its own tmpfs


@dataclass(frozen=True)
class DataDir:
    """A host folder a container needs, owned by the user its image runs as."""

    path: Path
    uid: int
    gid: int
    mode: int


def bundle_dir(settings: Settings) -> Path:
    """Where the bundle is by default (ark.edge.render.default_out): the configs the containers mount."""
    return settings.data_dir / "deploy"


def secrets_dir(settings: Settings) -> Path:
    return settings.data_dir / "secrets" / "compose"


def env_file(settings: Settings, service: str) -> Path:
    return secrets_dir(settings) / f"{service}.env"


def _loopback(address: Address, where: str) -> Address:
    """The address a container listens on: loopback only, as the port map binds every service here."""
    if address.host not in ("127.0.0.1", "::1", "localhost"):
        raise ConfigError(
            f"{where} = {address}: a container listens on loopback only (Nginx serves it; host networking "
            "would put anything else on the box's interfaces): use 127.0.0.1"
        )
    return address


def _refuse_doubles(settings: Settings) -> None:
    """A service `ark up` runs itself must not also be a container: two processes for one port."""
    chosen = set(settings.deploy.containers)
    doubles = [
        ("open-webui", settings.chat.open_webui == "yes", '[chat] open_webui = "yes"'),
        ("chromadb", settings.chat.open_webui == "yes", '[chat] open_webui = "yes" (ChromaDB runs beside it)'),
        ("n8n", settings.automation.n8n == "yes", '[automation] n8n = "yes"'),
        ("prometheus", settings.monitor.embedded == "yes", '[monitor] embedded = "yes"'),
        ("alertmanager", settings.monitor.embedded == "yes", '[monitor] embedded = "yes"'),
        (
            "comfyui",
            bool(settings.images.comfyui_path) and not settings.images.comfyui_url,
            "[images] comfyui_path (ARK runs that ComfyUI)",
        ),
    ]
    for name, embedded, why in doubles:
        if name in chosen and embedded:
            raise ConfigError(
                f"{name} is in [deploy] containers and {why}: both would run it on one port. "
                "Take it out of [deploy] containers, or turn the other off"
            )


def _hardening(*, read_only: bool, init: bool = True) -> dict[str, Any]:
    service: dict[str, Any] = {
        "network_mode": "host",
        "restart": "unless-stopped",
        "security_opt": ["no-new-privileges:true"],
        "cap_drop": ["ALL"],
        "read_only": read_only,
        "tmpfs": ["/tmp"],  # noqa: S108 - the container's own, in memory
        "logging": {"driver": "json-file", "options": {"max-size": "10m", "max-file": "3"}},
    }
    if init:
        service["init"] = True  # a PID 1 that reaps and forwards signals, where the image brings none
    return service


def _health(test: list[str], start_s: int = 60) -> dict[str, Any]:
    return {"test": test, "interval": "30s", "timeout": "10s", "retries": 3, "start_period": f"{start_s}s"}


def _http_check(tool: str, url: str) -> list[str]:
    if tool == "curl":
        return ["CMD", "curl", "-fsS", "-o", "/dev/null", url]
    return ["CMD", "wget", "-q", "-O", "/dev/null", url]  # busybox's wget (Alpine, prom/busybox) takes these


def _python_check(url: str) -> list[str]:
    return ["CMD", "python", "-c", f"import urllib.request; urllib.request.urlopen({url!r}, timeout=5)"]


def _bind(path: Path, *, read_only: bool = False, target: Path | str | None = None) -> dict[str, Any]:
    """A host folder at the same absolute path inside (so that the paths in the rendered configs resolve)."""
    mount: dict[str, Any] = {"type": "bind", "source": str(path), "target": str(target or path)}
    if read_only:
        mount["read_only"] = True
    return mount


def _gpu() -> dict[str, Any]:
    return {"resources": {"reservations": {"devices": [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]}}}


def _marked(env: Mapping[str, str], marks: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """Split an environment rendered with placeholder secrets: (the rest, the variables holding a secret)."""
    secret = [key for key, value in env.items() if any(mark in value for mark in marks.values())]
    return {k: v for k, v in env.items() if k not in secret}, secret


_OW_MARKS = {"key": "ark-compose-service-key", "secret": "ark-compose-session-secret"}


def _open_webui(settings: Settings) -> dict[str, Any]:
    listen = _loopback(settings.chat.open_webui_listen, "[chat] open_webui_listen")
    env, _ = _marked(webui.open_webui_env(settings, _OW_MARKS["key"], _OW_MARKS["secret"]), _OW_MARKS)
    data = settings.data_dir / "open-webui"
    # The image's start.sh passes --forwarded-allow-ips '*' to uvicorn: run uvicorn here instead, trusting
    # X-Forwarded-* from Nginx on this machine only (as FORWARDED_ALLOW_IPS says in embedded mode)
    command = ["uvicorn", "open_webui.main:app", "--host", listen.host, "--port", str(listen.port)]
    command += ["--forwarded-allow-ips", "127.0.0.1", "--workers", "1"]
    return {
        "image": "",
        # not read-only: Open WebUI copies its static files into the image's folder at each start
        **_hardening(read_only=False),
        "command": command,
        "environment": env,
        "env_file": [{"path": str(env_file(settings, "open-webui")), "required": True}],
        "volumes": [_bind(data)],
        # the first start migrates its database: minutes on a small box
        "healthcheck": _health(_http_check("curl", f"http://{listen.local()}/health"), 300),
    }


def _chromadb(settings: Settings) -> dict[str, Any]:
    listen = _loopback(settings.chat.chroma_listen, "[chat] chroma_listen")
    path = webui.chroma_path(settings)
    # Chroma 1.x images (Debian slim) have bash but, before 1.1, no curl: a check by bash's /dev/tcp works in both
    host = listen.local().rpartition(":")[0].strip("[]")
    probe = f"exec 3<>/dev/tcp/{host}/{listen.port} && printf 'GET /api/v2/heartbeat HTTP/1.0\\r\\n\\r\\n' >&3"
    probe += " && head -n 1 <&3 | grep -q ' 200 '"
    return {
        "image": "",
        **_hardening(read_only=True, init=False),  # the image's entrypoint is dumb-init
        "command": ["run", "--path", str(path), "--host", listen.host, "--port", str(listen.port)],
        "environment": webui.chroma_env(),
        "volumes": [_bind(path)],
        "healthcheck": _health(["CMD", "bash", "-c", probe]),
    }


def comfyui_listen(settings: Settings) -> Address:
    """Where ARK expects ComfyUI: ``[images] comfyui_url`` when it names this machine, else comfyui_listen."""
    parts = urlsplit(settings.images.comfyui_url)
    if parts.hostname in ("127.0.0.1", "::1", "localhost"):
        return Address(parts.hostname or "127.0.0.1", parts.port or 80)
    return _loopback(settings.images.comfyui_listen, "[images] comfyui_listen")


def _comfyui(settings: Settings, bundle: Path) -> dict[str, Any]:
    listen = comfyui_listen(settings)
    base = settings.data_dir / "comfyui"  # models/, custom_nodes/, input/, output/, user/, temp/
    cache = base / "cache"
    return {
        "image": "",
        "build": {"context": str(bundle / Path(COMFYUI_DOCKERFILE).parent)},
        # not read-only: custom nodes install and write beside their code; the image's user owns none of it
        **_hardening(read_only=False),
        # --base-directory leaves the database in the image's own folder (ComfyUI/user/), which its user cannot
        # write: it goes beside the rest
        "command": [
            *("--listen", listen.host, "--port", str(listen.port), "--base-directory", str(base)),
            f"--database-url=sqlite:///{base / 'user' / 'comfyui.db'}",
        ],
        "environment": {"HOME": str(cache), "XDG_CACHE_HOME": str(cache), "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"},
        "volumes": [_bind(base)],
        "deploy": _gpu(),
        "healthcheck": _health(_python_check(f"http://{listen.local()}/system_stats"), 120),
    }


def _prometheus(settings: Settings, bundle: Path) -> dict[str, Any]:
    m = settings.monitor
    listen = _loopback(m.prometheus_listen, "[monitor] prometheus_listen")
    config = bundle / "prometheus"
    data = settings.data_dir / "monitor" / "prometheus"  # where embedded mode keeps it too
    return {
        "image": "",
        **_hardening(read_only=True),
        "command": [
            f"--config.file={config / 'prometheus.yml'}",
            f"--storage.tsdb.path={data}",
            f"--storage.tsdb.retention.time={m.retention}",
            f"--web.listen-address={scrape_target(listen)}",
        ],
        "volumes": [_bind(config, read_only=True), _bind(data)],
        "healthcheck": _health(_http_check("wget", f"http://{listen.local()}/-/ready")),
    }


def _alertmanager(settings: Settings, bundle: Path) -> dict[str, Any]:
    listen = _loopback(settings.monitor.alertmanager_listen, "[monitor] alertmanager_listen")
    config = bundle / "alertmanager"
    data = settings.data_dir / "monitor" / "alertmanager"
    return {
        "image": "",
        **_hardening(read_only=True),
        "command": [
            f"--config.file={config / 'alertmanager.yml'}",
            f"--storage.path={data}",
            f"--web.listen-address={scrape_target(listen)}",
            "--cluster.listen-address=",  # one box: no gossip port (its default is 0.0.0.0:9094)
        ],
        "volumes": [_bind(config, read_only=True), _bind(data)],
        "healthcheck": _health(_http_check("wget", f"http://{listen.local()}/-/ready")),
    }


def _grafana(settings: Settings, bundle: Path) -> dict[str, Any]:
    port = port_map(settings).port("grafana")  # Nginx's upstream for grafana.DOMAIN: 127.0.0.1:3001
    data = settings.data_dir / "grafana"
    domain = settings.edge.domain
    env = {
        "GF_SERVER_HTTP_ADDR": "127.0.0.1",
        "GF_SERVER_HTTP_PORT": str(port),
        "GF_PATHS_DATA": str(data),
        "GF_PATHS_PLUGINS": str(data / "plugins"),
        "GF_PATHS_PROVISIONING": str(bundle / "grafana" / "provisioning"),
        "GF_LOG_MODE": "console",
        # sign-in: the user Nginx names from ARK's session (X-WEBAUTH-USER), from Nginx on this machine only
        "GF_AUTH_PROXY_ENABLED": "true",
        "GF_AUTH_PROXY_HEADER_NAME": "X-WEBAUTH-USER",
        "GF_AUTH_PROXY_HEADER_PROPERTY": "username",
        "GF_AUTH_PROXY_HEADERS": "Email:X-Trusted-Email Name:X-Trusted-Name",
        "GF_AUTH_PROXY_AUTO_SIGN_UP": "true",
        "GF_AUTH_PROXY_WHITELIST": "127.0.0.1",
        "GF_AUTH_DISABLE_LOGIN_FORM": "true",
        "GF_USERS_ALLOW_SIGN_UP": "false",
        "GF_USERS_AUTO_ASSIGN_ORG_ROLE": "Viewer",
        "GF_SECURITY_ADMIN_USER": "admin",  # its password is in the env_file
        "GF_SECURITY_DISABLE_GRAVATAR": "true",
        # nothing reported or fetched
        "GF_ANALYTICS_REPORTING_ENABLED": "false",
        "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
        "GF_ANALYTICS_CHECK_FOR_PLUGIN_UPDATES": "false",
        "GF_ANALYTICS_FEEDBACK_LINKS_ENABLED": "false",
        "GF_NEWS_NEWS_FEED_ENABLED": "false",
        "GF_SNAPSHOTS_EXTERNAL_ENABLED": "false",
        "GF_PLUGINS_PREINSTALL_DISABLED": "true",  # else it downloads its default app plugins at each start
    }
    if domain:
        env |= {"GF_SERVER_ROOT_URL": f"https://grafana.{domain}/", "GF_SECURITY_COOKIE_SECURE": "true"}
    return {
        "image": "",
        **_hardening(read_only=True),
        "environment": env,
        "env_file": [{"path": str(env_file(settings, "grafana")), "required": True}],
        "volumes": [
            _bind(data),
            _bind(bundle / "grafana" / "provisioning", read_only=True),
            # the dashboard provider reads them there (ark/monitor/grafana.py)
            _bind(bundle / "grafana" / "dashboards", read_only=True, target=DASHBOARDS_DIR),
        ],
        "healthcheck": _health(_http_check("wget", f"http://127.0.0.1:{port}/api/health")),
    }


def _n8n(settings: Settings) -> dict[str, Any]:
    # ark.automation.component brings the runtime with it: imported only when n8n is rendered
    from ark.automation.component import command, n8n_env, workflows, workflows_dir

    listen = _loopback(settings.automation.n8n_listen, "[automation] n8n_listen")
    env = n8n_env(settings, "ark-compose-service-key", N8N_KEY_FILE)
    env, _ = _marked(env, {"key": "ark-compose-service-key"})
    folder = workflows_dir(settings)
    try:
        flows = workflows(folder)
    except ValueError as exc:
        raise ConfigError(f"[automation] workflows_dir: {exc}") from None
    # The encryption key comes in the env_file and goes to a private file on the container's tmpfs before n8n
    # starts (n8n reads it from the file): workflows can read n8n's environment, never that variable
    keep = f'umask 077 && mkdir -p {N8N_KEY_FILE.parent} && printf %s "$ARK_N8N_ENCRYPTION_KEY" > {N8N_KEY_FILE}'
    start = command("node", N8N_PROGRAM, folder, flows)[2]
    volumes = [_bind(settings.data_dir / "n8n")]
    if flows:
        volumes.append(_bind(folder, read_only=True))
    return {
        "image": "",
        # not read-only: n8n writes its editor's files under its home (~/.cache/n8n) at each start
        **_hardening(read_only=False, init=False),  # the image's entrypoint is tini
        "entrypoint": ["tini", "--"],
        "command": ["/bin/sh", "-c", f"{keep} && unset ARK_N8N_ENCRYPTION_KEY && {start}"],
        "environment": env,
        "env_file": [{"path": str(env_file(settings, "n8n")), "required": True}],
        "volumes": volumes,
        # ready once its database is migrated, as embedded mode waits for it (/healthz answers as soon as it listens)
        "healthcheck": _health(_http_check("wget", f"http://{listen.local()}/healthz/readiness"), 300),
    }


def source_root() -> Path:
    """The ARK checkout this ARK runs from: the build context of the "ark" container."""
    return Path(ark.__file__).resolve().parents[2]


def ark_user(settings: Settings) -> tuple[int, int]:
    """The "ark" container runs as ``[deploy] user`` when that user exists here (it owns the data directory),
    else as the image's own user."""
    try:
        entry = pwd.getpwnam(settings.deploy.user)
    except KeyError:
        return ARK_USER
    return entry.pw_uid, entry.pw_gid


def _ark(settings: Settings) -> dict[str, Any]:
    root = source_root()
    if not (root / "Dockerfile").is_file():
        raise ConfigError(
            f'"ark" is in [deploy] containers, but {root} has no Dockerfile: its image is built from an ARK '
            "checkout (git clone), not from an installed package"
        )
    data = settings.data_dir
    env = {"ARK_DATA_DIR": str(data), "XDG_CACHE_HOME": str(data / "cache"), "HOME": str(data)}
    volumes = [_bind(data)]
    if settings.config_path is not None:
        config = settings.config_path.absolute()
        env["ARK_CONFIG"] = str(config)
        if not config.is_relative_to(data):
            volumes.append(_bind(config, read_only=True))
    uid, gid = ark_user(settings)
    return {
        "image": "",
        "build": {"context": str(root)},
        **_hardening(read_only=True),
        "user": f"{uid}:{gid}",
        "command": ["ark", "up"],
        "environment": env,
        "volumes": volumes,
        "deploy": _gpu(),
        "healthcheck": _health(_python_check(f"http://{settings.gateway.listen.local()}/health/live"), 120),
    }


def _escape(value: Any) -> Any:
    """Compose interpolates ``$``: every literal one is written ``$$``."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, list):
        return [_escape(v) for v in value]
    if isinstance(value, dict):
        return {k: _escape(v) for k, v in value.items()}
    return value


def compose_model(settings: Settings, bundle: Path | None = None) -> dict[str, Any]:
    """The compose file as data (before ``$`` is escaped)."""
    _refuse_doubles(settings)
    bundle = bundle or bundle_dir(settings)
    build = {
        "open-webui": lambda: _open_webui(settings),
        "chromadb": lambda: _chromadb(settings),
        "comfyui": lambda: _comfyui(settings, bundle),
        "prometheus": lambda: _prometheus(settings, bundle),
        "alertmanager": lambda: _alertmanager(settings, bundle),
        "grafana": lambda: _grafana(settings, bundle),
        "n8n": lambda: _n8n(settings),
        "ark": lambda: _ark(settings),
    }
    refs = images(settings)
    services = {}
    for name in dict.fromkeys(settings.deploy.containers):
        service = build[name]()
        service["image"] = refs[name]
        services[name] = service
    return {"name": "ark", "services": services}


def render(settings: Settings, bundle: Path | None = None) -> dict[str, str]:
    """The container bundle, by bundle-relative path ({} when ``[deploy] containers`` is empty). ``bundle``:
    where it is written (the containers mount its configs from there), DATA/deploy by default."""
    if not settings.deploy.containers:
        return {}
    model = _escape(compose_model(settings, bundle))
    header = (
        "# The container bundle, rendered by ARK from ark.toml (`ark render`; docs/deploy.md): edit the config,\n"
        "# not this file. Secrets are in the env_files under DATA/secrets/compose (`ark deploy apply` writes them).\n"
    )
    files = {COMPOSE_FILE: header + yaml.safe_dump(model, sort_keys=False, width=1000)}
    if "comfyui" in settings.deploy.containers:
        files[COMFYUI_DOCKERFILE] = pins.comfyui_dockerfile(settings, COMFYUI_USER)
    return files


def readme(settings: Settings, where: Path) -> str:
    return "\n".join(
        [
            "# The deployment bundle",
            "",
            "Rendered by `ark render` from ark.toml; edit the config and render again, never these files.",
            "See docs/deploy.md in ARK's source for the whole procedure.",
            "",
            "- `nginx/`, `certs/`: the sites, one per subdomain, and their certificates;",
            "- `firewall/`, `wireguard/`: the nftables ruleset and the WireGuard configs;",
            "- `prometheus/`, `alertmanager/`, `grafana/`: monitoring, alert rules and dashboards;",
            "- `systemd/`: ark.service, the Ollama and Nginx drop-ins, the backup timer;",
            *(
                [
                    f"- `compose/`: the containers ({', '.join(settings.deploy.containers)}),",
                    f"  run with `docker compose -f {where / COMPOSE_FILE} up -d`; their secrets are in",
                    f"  {secrets_dir(settings)} (written by `ark deploy apply`).",
                ]
                if settings.deploy.containers
                else ["- no containers ([deploy] containers is empty)."]
            ),
            "",
            "`ark deploy plan` says what installing it would change; `ark deploy apply` (as root) does it.",
            "",
        ]
    )


def data_dirs(settings: Settings) -> list[DataDir]:
    """The host folders the containers need, each owned by the user its image runs as."""
    data = settings.data_dir
    chosen = settings.deploy.containers
    found = [DataDir(secrets_dir(settings), 0, 0, 0o700)] if chosen else []
    if "ark" in chosen:
        # 0711 as the directories step of `ark deploy apply` wants it too (two modes: a change at every apply)
        found.append(DataDir(data, *ark_user(settings), 0o711))
    owners = {
        "open-webui": (data / "open-webui", ROOT),
        "chromadb": (webui.chroma_path(settings), ROOT),
        "comfyui": (data / "comfyui", COMFYUI_USER),
        "prometheus": (data / "monitor" / "prometheus", PROMETHEUS_USER),
        "alertmanager": (data / "monitor" / "alertmanager", PROMETHEUS_USER),  # prom/alertmanager: nobody too
        "grafana": (data / "grafana", GRAFANA_USER),
        "n8n": (data / "n8n", N8N_USER),
    }
    for name in dict.fromkeys(chosen):
        if name in owners:
            path, (uid, gid) = owners[name]
            found.append(DataDir(path, uid, gid, 0o700))
    if "comfyui" in chosen:
        # ComfyUI lists custom_nodes/ before it makes any folder: a base directory without one stops its start
        # (Comfy-Org/ComfyUI#8434); user/ holds its database
        found += [DataDir(data / "comfyui" / name, *COMFYUI_USER, 0o700) for name in ("custom_nodes", "user")]
    return found


def _env_text(values: Mapping[str, str]) -> str:
    for key, value in values.items():
        if not re.fullmatch(r"[A-Za-z0-9._~+/=:-]*", value):  # what an env_file can hold with no quoting
            raise EdgeError(f"the value of {key} cannot be written in an env_file")
    return "".join(f"{key}={value}\n" for key, value in values.items())


def secret_files(settings: Settings, store: Store) -> dict[Path, str]:
    """Absolute path -> content of each env_file the compose file names (the caller writes them 0600).
    The gateway keys are those embedded mode uses (made, or reused while still valid); the other secrets are
    derived from DATA/auth.key, so a second call returns the same."""
    from ark.chat.component import service_key as open_webui_key
    from ark.store import service_keys

    chosen = settings.deploy.containers
    files: dict[Path, str] = {}
    if not chosen:
        return files
    secret = load_secret(settings.data_dir)
    if "open-webui" in chosen:
        key = open_webui_key(store, settings.data_dir)
        session = b64(derive(secret, "open-webui session"))  # as ark.chat.component derives it
        env = webui.open_webui_env(settings, _OW_MARKS["key"], _OW_MARKS["secret"])
        _, names = _marked(env, _OW_MARKS)
        real = webui.open_webui_env(settings, key, session)
        files[env_file(settings, "open-webui")] = _env_text({name: real[name] for name in names})
    if "n8n" in chosen:
        key = service_keys.service_key(store, settings.data_dir, "n8n")
        encryption = b64(derive(secret, "n8n encryption"))  # as ark.automation.component derives it
        files[env_file(settings, "n8n")] = _env_text({"ARK_API_KEY": key, "ARK_N8N_ENCRYPTION_KEY": encryption})
    if "grafana" in chosen:
        password = b64(derive(secret, "grafana admin"))
        files[env_file(settings, "grafana")] = _env_text({"GF_SECURITY_ADMIN_PASSWORD": password})
    return files


# what `ark deploy apply` uses (ark/deploy/apply.py)
__all__ = [
    "COMPOSE_FILE",
    "DataDir",
    "data_dirs",
    "images",
    "images_lock_path",
    "record_digests",
    "render",
    "secret_files",
]
