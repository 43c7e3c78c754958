"""`ark init`, `ark config check`, `ark up`: write a configuration, check it, start ARK."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

import click
from rich.markup import escape

import ark
from ark.cli.common import config_options, make_console, settings_or_exit
from ark.config import Settings, generate_master_key, render_config
from ark.errors import ConfigError

console = make_console()
err_console = make_console(stderr=True)


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where to create ark.toml and ARK's data (default: $ARK_DATA_DIR or ~/.local/share/ark).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing ark.toml (its master key is lost).")
def init(data_dir: Path | None, force: bool) -> None:
    """Write DATA/ark.toml, commented, with a freshly generated master key."""
    target_dir = (data_dir or settings_or_exit(None, None).data_dir).absolute()
    path = target_dir / "ark.toml"
    if path.exists() and not force:
        raise click.ClickException(f"{path} already exists; pass --force to overwrite it")
    key = generate_master_key()
    write_config(path, render_config(key, target_dir if data_dir is not None else None))
    console.print(f"Wrote [bold]{escape(str(path))}[/]")
    console.print(f"Master key (shown once, also in that file): [bold]{key}[/]")
    hint = f" --data-dir {target_dir}" if data_dir is not None else ""
    console.print(f"Start ARK with: ark up{escape(hint)}")


def write_config(path: Path, text: str) -> None:
    """Create the file 0600 (it holds the master key), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@click.group()
def config() -> None:
    """Inspect the configuration."""


@config.command("check")
@config_options
def config_check(config_path: Path | None, data_dir: Path | None) -> None:
    """Validate ark.toml and the ARK_* environment without starting anything."""
    settings = settings_or_exit(config_path, data_dir)
    source = str(settings.config_path) if settings.config_path else "no file (defaults)"
    console.print(f"[green]OK[/] {escape(source)}")
    console.print(f"  data dir  {escape(str(settings.data_dir))}")
    console.print(f"  gateway   {settings.gateway.listen}")
    console.print(f"  engines   {', '.join(f'{e.name} ({e.kind})' for e in settings.engines)}")
    console.print(f"  models    {len(settings.models)} configured, {len(settings.aliases)} aliases")
    comfyui = settings.images.comfyui()
    images = ", ".join(m.id for m in settings.image_models) if comfyui else "none (no ComfyUI)"
    console.print(f"  images    {escape(images)}" + (f" on {escape(comfyui)}" if comfyui else ""))
    if not settings.master_key:
        console.print("  [yellow]no master key yet[/]: `ark up` or `ark init` generates one")


def prepare_data_dir(settings: Settings) -> Settings:
    """Create the data directory; on a first start with no config at all, write one with a new key."""
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    settings.models_dir.mkdir(exist_ok=True)
    settings.logs_dir.mkdir(exist_ok=True)
    if settings.master_key:
        return settings
    if settings.config_path is not None:
        raise ConfigError(f"{settings.config_path}: master_key is missing: set it there or in ARK_MASTER_KEY")
    path = settings.data_dir / "ark.toml"
    key = generate_master_key()
    write_config(path, render_config(key))
    err_console.print(f"First start: wrote {escape(str(path))}")
    err_console.print(f"Master key (shown once; it is also in that file): [bold]{key}[/]")
    return settings_or_exit(path, settings.data_dir)


def configure_logging(level: str) -> None:
    """``log_level`` sets the verbosity of ARK's own log; other libraries log from WARNING up (or from
    ``level``, when it is higher). Their INFO lines are not news to whoever runs ARK: alembic's per plugin and
    migration step on a first start, httpx's per request to an engine."""
    ours = logging.getLevelName(level.upper())
    logging.basicConfig(
        level=max(ours, logging.WARNING),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("ark").setLevel(ours)


@click.command()
@config_options
def up(config_path: Path | None, data_dir: Path | None) -> None:
    """Start ARK in the foreground: the gateway and the console on their ports, with every engine configured."""
    from ark.runtime import run, serve

    settings = prepare_data_dir(settings_or_exit(config_path, data_dir))
    configure_logging(settings.log_level)

    def started(_: object) -> None:  # what each engine serves is logged by the gateway's first look at it
        listen = settings.gateway.listen
        err_console.print(
            f"ARK {ark.__version__} gateway on http://{listen}/v1  console on http://{settings.console.listen}/  "
            f"key: {settings.master_key.prefix()}  data: {escape(str(settings.data_dir))}"
        )

    with contextlib.suppress(KeyboardInterrupt):
        run(serve(settings, on_started=started))  # a taken port is a ListenError, reported by the root group
