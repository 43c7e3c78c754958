"""Every setting ARK reads, declared once: the settings classes, and :class:`Settings`, the list of them.

Each setting is a field of a section class (:mod:`ark.config.services`, :mod:`ark.config.inference`,
:mod:`ark.config.edge`) declared with :func:`~ark.config.declare.setting`: its type, default and help.
The loader (file and environment), the check of ``ARK_*`` variables, ``ark init``'s commented file and
docs/configuration.md all walk :class:`Settings`, so none of them lists a setting or a section again;
tests/test_config.py fails when one of them forgets one. A new section is a ``@section`` class and one
field here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ark.config.declare import Scope, mapping, section, setting, show, table, tables
from ark.config.edge import ROLE_ORDER as ROLE_ORDER
from ark.config.edge import SITE_ROLES as SITE_ROLES
from ark.config.edge import EdgeSettings, FirewallSettings, WireguardSettings
from ark.config.events import EventsSettings, WebhookSettings
from ark.config.images import ImageModelSettings, ImagesSettings
from ark.config.inference import DEFAULT_ENGINES, EngineSettings, GpuSettings, ModelSettings
from ark.config.services import (
    AuthSettings,
    AutomationSettings,
    BackupSettings,
    ChatSettings,
    ConsoleSettings,
    DeploySettings,
    GatewaySettings,
    MonitorSettings,
    StoreSettings,
)
from ark.config.types import Choice, PathType, Secret, SecretStr, Type
from ark.errors import ConfigError


class ModelId(Type[str]):
    expected = "the id of a model (a non-empty string)"

    def parse(self, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail()
        return value


def _no_alias_chains(aliases: dict[str, Any], scope: Scope) -> None:
    """An alias names a model, not another alias."""
    for alias, target in aliases.items():
        if target in aliases:
            where = f"{scope.where(show(alias))} = {show(target)}"
            raise ConfigError(f"{where}: expected a model id, but {show(target)} is itself an alias")


@section
class Settings:
    """Everything ARK reads, loaded once by :func:`ark.config.load_settings` and passed down."""

    config_path: Path | None = None  # the file read, or None when running on defaults
    data_dir: Path = setting(
        PathType(),
        None,
        "Where ARK keeps its state: models/, logs/, the database. Default: $XDG_DATA_HOME/ark (~/.local/share/ark).",
    )
    master_key: Secret = setting(
        SecretStr(),
        "",
        "The admin API key (Authorization: Bearer ...). `ark init` and the first `ark up` generate one.",
    )
    log_level: str = setting(Choice("debug", "info", "warning", "error"), "info", "Verbosity of ARK's own log.")
    gateway: GatewaySettings = table(GatewaySettings)
    store: StoreSettings = table(StoreSettings)
    gpu: GpuSettings = table(GpuSettings)
    console: ConsoleSettings = table(ConsoleSettings)
    auth: AuthSettings = table(AuthSettings)
    edge: EdgeSettings = table(EdgeSettings)
    wireguard: WireguardSettings = table(WireguardSettings)
    firewall: FirewallSettings = table(FirewallSettings)
    monitor: MonitorSettings = table(MonitorSettings)
    chat: ChatSettings = table(ChatSettings)
    images: ImagesSettings = table(ImagesSettings)
    events: EventsSettings = table(EventsSettings)
    automation: AutomationSettings = table(AutomationSettings)
    backup: BackupSettings = table(BackupSettings)
    deploy: DeploySettings = table(DeploySettings)
    engines: tuple[EngineSettings, ...] = tables(EngineSettings, default=DEFAULT_ENGINES, limit=32)
    models: tuple[ModelSettings, ...] = tables(ModelSettings, env=False, label="ID", quoted=True)
    image_models: tuple[ImageModelSettings, ...] = tables(
        ImageModelSettings, env=False, label="ID", quoted=True, default={"sdxl": {}}, limit=64
    )
    webhooks: tuple[WebhookSettings, ...] = tables(WebhookSettings, limit=32)
    aliases: Mapping[str, str] = mapping(
        ModelId(),
        '`"alias" = "model id"`. Clients may use the alias anywhere a model id goes; answers name '
        "the alias they asked for. An alias may not point at another alias.",
        example='"gpt-4" = "qwen3.5:35b"',
        check=_no_alias_chains,
    )

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def backups_dir(self) -> Path:
        return Path(self.backup.dir).expanduser() if self.backup.dir else self.data_dir / "backups"
