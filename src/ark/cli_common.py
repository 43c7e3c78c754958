"""What every command that reads the settings shares: --config/--data-dir and one way to fail on bad ones."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ark.config import Settings, load_settings
from ark.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


class ConfigProblem(click.ClickException):
    exit_code = 2

    def format_message(self) -> str:
        return f"bad configuration: {self.message}"


def config_options(fn: F) -> F:
    """--config and --data-dir, on every command that reads the settings."""

    @click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path, dir_okay=False),
        help="The ark.toml to read (default: $ARK_CONFIG, else DATA/ark.toml).",
    )
    @click.option(
        "--data-dir",
        type=click.Path(path_type=Path, file_okay=False),
        help="ARK's data directory (default: $ARK_DATA_DIR, else ~/.local/share/ark).",
    )
    @functools.wraps(fn)
    def wrapper(*args: Any, config_path: Path | None, data_dir: Path | None, **kwargs: Any) -> Any:
        return fn(*args, config_path=config_path, data_dir=data_dir, **kwargs)

    return wrapper  # type: ignore[return-value]


def settings_or_exit(config_path: Path | None, data_dir: Path | None) -> Settings:
    try:
        return load_settings(config_path=config_path, data_dir=data_dir)
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from None


def qr_text(text: str, *, level: str = "L") -> str:
    """``text`` as a QR code of block characters (dark on light, as scanners expect), for a phone to scan:
    a WireGuard peer file, an authenticator's otpauth:// URI. ``level``: error correction (L, M, Q, H)."""
    import io

    import qrcode  # imported here: only the commands that draw one pay for it

    correction = getattr(qrcode.constants, f"ERROR_CORRECT_{level}")
    code = qrcode.QRCode(border=2, error_correction=correction)
    code.add_data(text)
    code.make(fit=True)
    out = io.StringIO()
    code.print_ascii(out=out, invert=True)
    return out.getvalue()
