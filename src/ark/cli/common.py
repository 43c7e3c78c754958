"""What every command shares: --config/--data-dir, the settings, how output is printed.

Output never wraps or cuts a line to the terminal's width: a path, a key or a command a person copies stays
whole on one line, whatever COLUMNS says and whether or not a terminal is attached. Commands print through
:func:`make_console`, and tables are this module's :class:`Table` (a test checks that nothing else builds either).
ARK's errors need no handling here: the root group (:mod:`ark.cli.main`) turns every one into a CLI error.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson
import rich.table
from rich.console import Console, ConsoleOptions, RenderResult

from ark.admin_client import call
from ark.config import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])
_UNBOUNDED = 1 << 16  # a width no table reaches: measured against it, a table takes its natural width
HELP_WIDTH = 100  # --help's width, whatever the terminal's (docs/cli.md is generated at it)
_QUOTED = re.compile(r"`[^`\n]+`")
_NBSP = "\u00a0"  # not whitespace to textwrap: a line is never broken at it


class ConfigProblem(click.ClickException):
    """A ConfigError as the CLI reports it: exit 2, "bad configuration: ..." (``ark.cli.main`` raises it)."""

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
    """The settings; invalid ones raise ConfigError, which exits 2 (bad configuration)."""
    return load_settings(config_path=config_path, data_dir=data_dir)


def call_gateway(config_path: Path | None, data_dir: Path | None, method: str, path: str, **kwargs: Any) -> Any:
    """One call to the running gateway's management API (:func:`ark.admin_client.call`)."""
    return call(settings_or_exit(config_path, data_dir), method, path, **kwargs)


def print_json(data: Any) -> None:
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


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


def make_console(*, stderr: bool = False) -> Console:
    """The console a command prints with. ``soft_wrap``: a printed line is written whole (no word wrap, no
    cropping at the width rich detects, which is 80 columns without a terminal); a terminal narrower than the
    line wraps it on screen only, and a copy of it is still one line."""
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


class Table(rich.table.Table):
    """A table at its natural width, whatever the terminal's: rich fits a table to the console by wrapping
    cells and cutting words with "…", which breaks the paths, keys and model names in them. Under a live
    display (``ark gpu status --watch``) rich still crops each line at the screen's edge to redraw in place."""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        natural = self.__rich_measure__(console, options.update_width(_UNBOUNDED)).maximum
        yield from super().__rich_console__(console, options.update_width(natural))


class HelpFormatter(click.HelpFormatter):
    """--help laid out at HELP_WIDTH whatever the terminal's, and never broken inside `backticks`: a command
    or a path quoted there stays on one line."""

    def __init__(self, indent_increment: int = 2, width: int | None = None, max_width: int | None = None) -> None:
        super().__init__(indent_increment, width=HELP_WIDTH, max_width=HELP_WIDTH)

    def write_text(self, text: str) -> None:
        super().write_text(_QUOTED.sub(lambda quoted: quoted[0].replace(" ", _NBSP), text))

    def getvalue(self) -> str:
        return super().getvalue().replace(_NBSP, " ")


class Context(click.Context):
    formatter_class = HelpFormatter


def use_ark_context(command: click.Command) -> None:
    """Give ``command`` and every command under it :class:`Context` (click makes each command's context
    from that command's own class, not its parent's)."""
    command.context_class = Context
    for sub in getattr(command, "commands", {}).values():
        use_ark_context(sub)
