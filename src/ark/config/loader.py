"""Load ark.toml and the environment into typed, frozen settings.

Precedence is environment > file > default, for every setting. Every problem
is a :class:`~ark.errors.ConfigError` naming the file (or variable), the key,
the bad value and what was expected; nothing starts on a bad config.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ark.config import schema
from ark.config.schema import Setting
from ark.config.types import Address, Secret, SecretStr
from ark.errors import ConfigError


@dataclass(frozen=True)
class GatewaySettings:
    listen: Address
    max_body_bytes: int
    head_timeout_s: float
    write_timeout_s: float
    max_connections: int
    max_connections_per_client: int
    max_inflight: int
    log_prompts: bool
    access_log: str
    access_log_max_bytes: int
    access_log_keep: int
    model_refresh_s: float


@dataclass(frozen=True)
class StoreSettings:
    url: str  # "" = SQLite at DATA/ark.db
    retention_days: int
    shared: str  # "auto", "yes", "no"

    @property
    def is_shared(self) -> bool:
        """Several gateways enforce one budget together: leases in the database."""
        scheme = urlsplit(self.url).scheme  # "postgresql", "postgres", "postgresql+psycopg"
        return self.shared == "yes" or (self.shared == "auto" and scheme.startswith("postgres"))


@dataclass(frozen=True)
class GpuSettings:
    device: str  # "auto", "nvml", "virtual", "ram"
    index: int
    memory_gb: float
    reserve_gb: float
    large_fraction: float
    comfyui_url: str
    comfyui_idle_gb: float
    max_wait_s: float
    swap_delay_s: float
    queue_size: int
    require_full_gpu: bool


@dataclass(frozen=True)
class ConsoleSettings:
    listen: Address
    overview_sample_s: float


@dataclass(frozen=True)
class AuthSettings:
    session_hours: float
    max_failures: int
    lockout_s: float
    identity_ttl_s: int


@dataclass(frozen=True)
class EdgeSettings:
    domain: str
    email: str
    tls: str  # "letsencrypt", "self-signed"
    acme_directory: str
    http_port: int
    https_port: int
    listen_address: str  # "" = every address
    ipv6: bool
    hsts_max_age: int
    upload_max_bytes: int
    site_roles: Mapping[str, str]  # every site behind the sign-in -> the least role it needs
    prometheus_user: str
    prometheus_password: Secret
    upstreams: Mapping[str, int]
    nginx_user: str
    nginx_run_dir: Path | None  # None = the system's paths
    cert_warn_days: int


@dataclass(frozen=True)
class WireguardSettings:
    interface: str
    subnet: str
    listen_port: int
    endpoint: str  # "" = [edge] domain:listen_port
    peer_allowed_ips: tuple[str, ...]  # () = the subnet
    dns: tuple[str, ...]
    keepalive_s: int


@dataclass(frozen=True)
class FirewallSettings:
    ssh_port: int
    confirm_s: int
    backend: str  # "nft", "iptables"
    docker_subnet: tuple[str, ...]
    allow_tcp: tuple[int, ...]
    allow_udp: tuple[int, ...]
    geoblock_scope: str  # "gateway", "public"
    persist: bool
    persist_nft_path: Path
    persist_rules_v4_path: Path
    persist_rules_v6_path: Path
    persist_ipsets_path: Path


@dataclass(frozen=True)
class MonitorSettings:
    embedded: str  # "auto", "yes", "no"
    prometheus_listen: Address
    node_exporter_listen: Address
    gpu_exporter_listen: Address
    alertmanager_listen: Address
    retention: str
    scrape_interval_s: int
    alert_webhook_url: str
    alert_email: str
    smtp_smarthost: str
    smtp_from: str
    gpu_temperature_c: float
    vram_full_ratio: float
    queue_wait_p95_s: float
    error_ratio: float
    budget_ratio: float
    disk_ratio: float
    certificate_days: int
    certificates: str  # comma-separated globs


@dataclass(frozen=True)
class EngineSettings:
    name: str
    kind: str
    url: str
    api_key: Secret
    connect_timeout: float
    max_response_bytes: int
    first_token_timeout: float
    total_timeout: float
    max_parallel: int
    max_queue: int
    keep_alive: str
    max_keep_alive_s: int
    gpu_managed: str  # "auto", "yes", "no"
    restart_command: str
    restart_timeout_s: float
    models_dir: Path
    bundled_model: bool
    n_ctx: int
    n_threads: int
    cpu_variant: str
    n_gpu_layers: int
    worker_prefix: str

    @property
    def is_gpu_managed(self) -> bool:
        """The arbiter manages this engine's models: an Ollama on this machine, unless told otherwise."""
        if self.kind not in ("ollama", "embedded") or self.gpu_managed == "no":
            return False
        if self.kind == "embedded":
            return True
        host = urlsplit(self.url).hostname or ""
        return self.gpu_managed == "yes" or host in ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ModelSettings:
    id: str
    engine: str | None  # None: whichever engine lists the model
    memory_gb: float | None
    priority: str
    pinned: bool
    idle_timeout_s: float
    large: str  # "auto", "yes", "no"
    input_cost_per_token: float
    output_cost_per_token: float
    cost_per_gpu_second: float
    num_ctx: int | None
    num_batch: int | None
    num_gpu: int | None
    max_output_tokens: int

    @property
    def fixed_options(self) -> dict[str, int]:
        """Ollama options every request to this model gets (the ones that make Ollama reload a model)."""
        fixed = {"num_ctx": self.num_ctx, "num_batch": self.num_batch, "num_gpu": self.num_gpu}
        return {name: value for name, value in fixed.items() if value is not None}


@dataclass(frozen=True)
class Settings:
    config_path: Path | None  # the file read, or None when running on defaults
    data_dir: Path
    master_key: Secret
    log_level: str
    gateway: GatewaySettings
    store: StoreSettings
    gpu: GpuSettings
    console: ConsoleSettings
    auth: AuthSettings
    edge: EdgeSettings
    wireguard: WireguardSettings
    firewall: FirewallSettings
    monitor: MonitorSettings
    engines: tuple[EngineSettings, ...]
    models: tuple[ModelSettings, ...]
    aliases: Mapping[str, str]

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"


def default_data_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "ark"


def env_name(*parts: str) -> str:
    """``ARK_GATEWAY_LISTEN`` for ("gateway", "listen"); names are upper-cased, other characters become _."""
    return "_".join(["ARK", *(re.sub(r"[^A-Za-z0-9]", "_", p).upper() for p in parts)])


def find_config(config_path: Path | None, data_dir: Path | None, env: Mapping[str, str]) -> Path | None:
    """The file to read: --config, else $ARK_CONFIG, else DATA/ark.toml when it exists."""
    explicit = config_path or (Path(env["ARK_CONFIG"]).expanduser() if env.get("ARK_CONFIG") else None)
    if explicit is not None:
        return explicit
    guess = (data_dir or _env_data_dir(env) or default_data_dir(env)) / "ark.toml"
    return guess if guess.exists() else None


def _env_data_dir(env: Mapping[str, str]) -> Path | None:
    return Path(env["ARK_DATA_DIR"]).expanduser() if env.get("ARK_DATA_DIR") else None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a TOML file") from None
    except PermissionError:
        raise ConfigError(f"{path}: cannot read the config file (permission denied)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text, expected a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def load_settings(
    *,
    config_path: Path | None = None,
    data_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings from (in order of precedence) the environment, the file and the defaults.

    ``config_path`` and ``data_dir`` are the CLI's ``--config`` / ``--data-dir`` and win over
    ``ARK_CONFIG`` / ``ARK_DATA_DIR``.
    """
    env = os.environ if env is None else env
    path = find_config(config_path, data_dir, env)
    doc = read_toml(path) if path is not None else {}
    return _Loader(path, doc, env).build(data_dir)


class _Loader:
    def __init__(self, path: Path | None, doc: dict[str, Any], env: Mapping[str, str]) -> None:
        self.path = path
        self.doc = doc
        self.env = env
        self.env_used: set[str] = set(schema.ENV_ONLY) | {"ARK_DATA_DIR"}

    # -- where a value came from, for error messages -------------------------------------------
    def _file_where(self, section: str, key: str) -> str:
        return f"{self.path}: {section + ' ' if section else ''}{key}"

    def _fail(self, where: str, value: Any, setting: Setting) -> ConfigError:
        secret = "key" in setting.key or isinstance(setting.type, SecretStr)
        shown = "<hidden>" if secret and isinstance(value, str) else _show(value)
        return ConfigError(f"{where} = {shown}: expected {setting.type.expected}")

    def _value(
        self, setting: Setting, table: Mapping[str, Any], section: str, env_parts: tuple[str, ...] | None
    ) -> Any:
        var = env_name(*env_parts, setting.key) if env_parts is not None else ""
        if var and var in self.env:
            self.env_used.add(var)
            raw, where = self.env[var], f"environment variable {var}"
        elif setting.key in table:
            raw, where = table[setting.key], self._file_where(section, setting.key)
        else:
            return setting.default if setting.default is None else setting.type.parse(setting.default)
        try:
            return setting.type.parse(raw)
        except ValueError:
            raise self._fail(where, raw, setting) from None

    def _check_keys(self, table: Mapping[str, Any], known: tuple[str, ...], section: str) -> None:
        for key in table:
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                where = f"{self.path}: unknown key {section + ' ' if section else ''}{key}"
                raise ConfigError(where + (f' (did you mean "{hint[0]}"?)' if hint else f"; known: {', '.join(known)}"))

    def _table(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {_show(value)}")
        return value

    # -- sections ---------------------------------------------------------------------------------
    def build(self, data_dir_arg: Path | None) -> Settings:
        top_keys = tuple(s.key for s in schema.TOP) + schema.SECTIONS
        self._check_keys(self.doc, top_keys, "")
        top = {s.key: self._value(s, self.doc, "", ()) for s in schema.TOP}
        data_dir = data_dir_arg or _env_data_dir(self.env) or top["data_dir"] or default_data_dir(self.env)

        gateway_table = self._table(self.doc.get("gateway", {}), self._file_where("", "[gateway]"))
        self._check_keys(gateway_table, tuple(s.key for s in schema.GATEWAY), "[gateway]")
        gateway = GatewaySettings(
            **{s.key: self._value(s, gateway_table, "[gateway]", ("gateway",)) for s in schema.GATEWAY}
        )

        store_table = self._table(self.doc.get("store", {}), self._file_where("", "[store]"))
        self._check_keys(store_table, tuple(s.key for s in schema.STORE), "[store]")
        store = StoreSettings(**{s.key: self._value(s, store_table, "[store]", ("store",)) for s in schema.STORE})

        gpu_table = self._table(self.doc.get("gpu", {}), self._file_where("", "[gpu]"))
        self._check_keys(gpu_table, tuple(s.key for s in schema.GPU), "[gpu]")
        gpu = GpuSettings(**{s.key: self._value(s, gpu_table, "[gpu]", ("gpu",)) for s in schema.GPU})

        plain = {name: self._plain(name, settings) for name, settings in schema.PLAIN}
        engines = self._engines(data_dir)
        models = self._models({e.name for e in engines})
        aliases = self._aliases()
        self._check_env()
        return Settings(
            config_path=self.path,
            data_dir=Path(data_dir).absolute(),
            master_key=top["master_key"],
            log_level=top["log_level"],
            gateway=gateway,
            store=store,
            gpu=gpu,
            console=ConsoleSettings(**plain["console"]),
            auth=AuthSettings(**plain["auth"]),
            edge=EdgeSettings(**plain["edge"]),
            wireguard=WireguardSettings(**plain["wireguard"]),
            firewall=FirewallSettings(**plain["firewall"]),
            monitor=MonitorSettings(**plain["monitor"]),
            engines=engines,
            models=models,
            aliases=aliases,
        )

    def _plain(self, name: str, settings: tuple[Setting, ...]) -> dict[str, Any]:
        """The values of a flat section (``[console]``, ``[edge]``...), checked."""
        section = f"[{name}]"
        table = self._table(self.doc.get(name, {}), self._file_where("", section))
        self._check_keys(table, tuple(s.key for s in settings), section)
        return {s.key: self._value(s, table, section, (name,)) for s in settings}

    def _engines(self, data_dir: Path) -> tuple[EngineSettings, ...]:
        declared = self.doc.get("engines")
        tables = self._table(declared, self._file_where("", "[engines]")) if declared is not None else {}
        if not tables:
            tables = schema.DEFAULT_ENGINES
        if len(tables) > 32:
            raise ConfigError(f"{self.path}: [engines] declares {len(tables)} engines, at most 32 are supported")
        known = tuple(s.key for s in schema.ENGINE)
        result = []
        for name, raw in tables.items():
            section = f"[engines.{name}]"
            table = self._table(raw, self._file_where("", section))
            self._check_keys(table, known, section)
            values = {s.key: self._value(s, table, section, ("engines", name)) for s in schema.ENGINE}
            kind = values["kind"]
            if kind is None:
                raise ConfigError(
                    f"{self._file_where(section, 'kind')} is missing: expected {schema.ENGINE[0].type.expected}"
                )
            for s in schema.ENGINE:
                if kind not in s.kinds and s.key in table:
                    raise ConfigError(f"{self._file_where(section, s.key)}: not a setting of a {kind} engine")
            if kind in ("ollama", "openai") and not values["url"]:
                raise ConfigError(f"{self._file_where(section, 'url')} is missing: a {kind} engine needs its URL")
            values["url"] = values["url"] or ""
            values["models_dir"] = values["models_dir"] or Path(data_dir) / "models"
            result.append(EngineSettings(name=name, **values))
        return tuple(result)

    def _models(self, engine_names: set[str]) -> tuple[ModelSettings, ...]:
        tables = self._table(self.doc.get("models", {}), self._file_where("", "[models]"))
        known = tuple(s.key for s in schema.MODEL)
        result = []
        for model_id, raw in tables.items():
            section = f'[models."{model_id}"]'
            table = self._table(raw, self._file_where("", section))
            self._check_keys(table, known, section)
            values = {s.key: self._value(s, table, section, None) for s in schema.MODEL}
            if values["engine"] and values["engine"] not in engine_names:
                raise ConfigError(
                    f"{self._file_where(section, 'engine')} = {_show(values['engine'])}: "
                    f"expected one of the engines: {', '.join(sorted(engine_names))}"
                )
            result.append(ModelSettings(id=model_id, **values))
        return tuple(result)

    def _aliases(self) -> dict[str, str]:
        table = self._table(self.doc.get("aliases", {}), self._file_where("", "[aliases]"))
        for alias, target in table.items():
            where = self._file_where("[aliases]", f'"{alias}"')
            if not isinstance(target, str) or not target.strip():
                raise ConfigError(f"{where} = {_show(target)}: expected the id of a model (a non-empty string)")
            if target in table:
                raise ConfigError(f'{where} = "{target}": expected a model id, but "{target}" is itself an alias')
        return dict(table)

    def _check_env(self) -> None:
        """A mistyped ARK_* variable would silently do nothing: refuse it instead."""
        valid = {env_name(s.key) for s in schema.TOP} | {env_name("gateway", s.key) for s in schema.GATEWAY}
        valid |= {env_name("store", s.key) for s in schema.STORE} | {env_name("gpu", s.key) for s in schema.GPU}
        valid |= {env_name(name, s.key) for name, settings in schema.PLAIN for s in settings}
        for var in self.env:
            if var.startswith("ARK_") and var not in self.env_used and var not in valid:
                raise ConfigError(
                    f"environment variable {var}: not an ARK setting "
                    "(expected ARK_<SECTION>_<KEY> of a setting in docs/configuration.md)"
                )


def _show(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)
