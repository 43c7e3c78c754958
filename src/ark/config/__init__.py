"""ARK's configuration: one file, ark.toml, overridable from the environment.

See :mod:`ark.config.schema` for every setting and docs/configuration.md for
the reference generated from it.
"""

from __future__ import annotations

from ark.config.loader import (
    EngineSettings,
    FirewallSettings,
    GatewaySettings,
    ModelSettings,
    Settings,
    StoreSettings,
    default_data_dir,
    env_name,
    find_config,
    load_settings,
)
from ark.config.template import generate_master_key, render_config
from ark.config.types import Address, Secret

__all__ = [
    "Address",
    "EngineSettings",
    "FirewallSettings",
    "GatewaySettings",
    "ModelSettings",
    "Secret",
    "Settings",
    "StoreSettings",
    "default_data_dir",
    "env_name",
    "find_config",
    "generate_master_key",
    "load_settings",
    "render_config",
]
