"""The ``ark`` command: the root group, the list of every command under it, and where ARK's errors end.

Each command group lives in its own module and imports nothing of this one; a new group is a module plus
one entry in :data:`COMMANDS`.
"""

from __future__ import annotations

from typing import Any

import click

import ark
from ark.cli import (
    admin,
    backup,
    certs,
    deploy,
    doctor,
    edge,
    events,
    firewall,
    gpu,
    models,
    peers,
    services,
    up,
    upgrade,
    users,
)
from ark.cli.common import ConfigProblem, make_console, use_ark_context
from ark.errors import ArkError, ConfigError

console = make_console()


class ArkGroup(click.Group):
    """The root group; every command runs inside its :meth:`invoke`, so ARK's errors become CLI errors here
    and nowhere else: a ConfigError exits 2 ("bad configuration: ..."), any other ArkError exits 1 with
    its message. A command catches one itself only to add to what it says."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise ConfigProblem(str(exc)) from None
        except ArkError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:  # a file or folder ARK needs (a models folder under a file...): one line, no trace
            where = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(f"{where}{exc.strerror or exc}") from None


@click.group(cls=ArkGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(ark.__version__, prog_name="ark")
def main() -> None:
    """ARK: run a sovereign AI platform on one machine.

    Start with `ark up`: it serves an OpenAI-compatible API on 127.0.0.1:4000
    from Ollama (when one answers) or the embedded llama.cpp engine.
    """


@click.command()
def version() -> None:
    """Print ARK's version."""
    console.print(f"ark {ark.__version__}")


COMMANDS: tuple[click.Command, ...] = (
    version,
    up.init,
    up.config,
    up.up,
    models.status,
    models.models,
    admin.keys,
    admin.teams,
    admin.usage,
    gpu.gpu,
    users.users,
    services.services,
    events.events,
    edge.render,
    edge.audit,
    certs.certs,
    peers.peers,
    firewall.firewall,
    backup.backup,
    backup.restore,
    upgrade.upgrade,
    doctor.doctor,
    deploy.deploy,
)

for command in COMMANDS:
    main.add_command(command)
use_ark_context(main)  # last: every command is registered by now
