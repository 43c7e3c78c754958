"""ARK's configuration: one file, ark.toml, overridable from the environment.

Every setting is declared once, as a field of a settings class (:mod:`ark.config.declare` says how;
:class:`Settings` in :mod:`ark.config.schema` lists the sections); docs/configuration.md is generated
from them.
"""

from __future__ import annotations

from ark.config.declare import env_name
from ark.config.edge import EdgeSettings, FirewallSettings, WireguardSettings
from ark.config.inference import EngineSettings, GpuSettings, ModelSettings
from ark.config.loader import default_data_dir, find_config, load_settings
from ark.config.schema import Settings
from ark.config.services import AuthSettings, ConsoleSettings, GatewaySettings, MonitorSettings, StoreSettings
from ark.config.template import generate_master_key, render_config
from ark.config.types import Address, Secret

__all__ = [
    "Address",
    "AuthSettings",
    "ConsoleSettings",
    "EdgeSettings",
    "EngineSettings",
    "FirewallSettings",
    "GatewaySettings",
    "GpuSettings",
    "ModelSettings",
    "MonitorSettings",
    "Secret",
    "Settings",
    "StoreSettings",
    "WireguardSettings",
    "default_data_dir",
    "env_name",
    "find_config",
    "generate_master_key",
    "load_settings",
    "render_config",
]
