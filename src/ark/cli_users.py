"""`ark users`: the people who sign in to the console (and, through Nginx, to every site).

These commands write ARK's database directly, not through a running ARK: the first admin can be made
before `ark up`, and a change is seen by the next request anyway (every session check reads the
database). Passwords come from the terminal (asked twice) or, with --password-stdin, from a pipe;
never from the command line, where other users and the shell history would see them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import orjson
from rich.console import Console
from rich.table import Table

from ark.auth import passwords, totp
from ark.auth.users import ROLES, User, UserStore
from ark.cli_common import config_options, qr_text, settings_or_exit
from ark.config import Settings
from ark.errors import ArkError
from ark.store import Store

console = Console(highlight=False)


@contextmanager
def _users(config_path: Path | None, data_dir: Path | None) -> Iterator[tuple[UserStore, Settings]]:
    """The user store of the configured database (migrated on the way in); ARK's errors become CLI errors."""
    settings = settings_or_exit(config_path, data_dir)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        store = Store.open(settings)
    except (ArkError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        yield UserStore(store.engine), settings
    except ArkError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()


def _change(config_path: Path | None, data_dir: Path | None, change: Callable[[UserStore], User], done: str) -> None:
    """Make one change to a user and say so: ``done`` with ``{user}`` standing for the changed user."""
    with _users(config_path, data_dir) as (store, _):
        user = change(store)
    console.print(done.format(user=_describe(user)))


def _terminal() -> bool:
    return sys.stdin.isatty()


def read_password(from_stdin: bool) -> str:
    """A new password: from the terminal, typed twice, or from standard input (one line)."""
    if from_stdin:
        text = sys.stdin.read(passwords.MAX_LENGTH + 3)
        password = text.removesuffix("\n").removesuffix("\r")
    elif _terminal():
        password = click.prompt("Password", hide_input=True, show_default=False)
        if click.prompt("Password again", hide_input=True, show_default=False) != password:
            raise click.ClickException("the two passwords differ; nothing was changed")
    else:
        raise click.ClickException("no terminal to ask for the password: pipe it in with --password-stdin")
    try:
        return passwords.check_new(password)
    except passwords.PasswordProblem as exc:
        raise click.ClickException(f"{exc}; nothing was changed") from None


def _describe(user: User) -> str:
    factor = ", TOTP" if user.totp_secret else ""
    state = " [red]disabled[/]" if user.disabled else ""
    return f"[bold]{user.name}[/] <{user.email}> ({user.role}{factor}){state}"


@click.group()
def users() -> None:
    """People who sign in to ARK's console and the sites behind Nginx."""


@users.command("add")
@config_options
@click.argument("name")
@click.option("--email", help="E-mail address (Open WebUI's account key). Default: NAME@DOMAIN.")
@click.option("--display-name", help="Name shown in the sites (default: NAME).")
@click.option("--role", type=click.Choice(ROLES), default="user", show_default=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def users_add(
    config_path: Path | None,
    data_dir: Path | None,
    name: str,
    email: str | None,
    display_name: str | None,
    role: str,
    password_stdin: bool,
) -> None:
    """Create a user; the password is asked for (twice) or read from standard input."""
    with _users(config_path, data_dir) as (store, settings):
        if store.get(name) is not None:
            raise click.ClickException(f"a user named {name!r} exists already")
        if email is None:
            email = name if "@" in name else f"{name.lower()}@{settings.edge.domain or 'localhost'}"
        password = read_password(password_stdin)
        user = store.add(name, email, display_name or name, role, passwords.hash_password(password))
    console.print(f"Added {_describe(user)}")


@users.command("list")
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def users_list(config_path: Path | None, data_dir: Path | None, as_json: bool) -> None:
    """Every user, with role, second factor, state and live sessions."""
    with _users(config_path, data_dir) as (store, _):
        rows = store.list_users()
    if as_json:
        out = [
            {
                "name": u.name,
                "email": u.email,
                "display_name": u.display_name,
                "role": u.role,
                "totp": u.totp_secret is not None,
                "disabled": u.disabled,
                "sessions": sessions,
                "created_at": u.created_at.isoformat(),
            }
            for u, sessions in rows
        ]
        click.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table("name", "e-mail", "display name", "role", "totp", "state", "sessions", "created")
    for u, sessions in rows:
        state = "[red]disabled[/]" if u.disabled else "[green]active[/]"
        totp_state = "yes" if u.totp_secret else "no"
        table.add_row(
            u.name, u.email, u.display_name, u.role, totp_state, state, str(sessions), f"{u.created_at:%Y-%m-%d}"
        )
    console.print(table)


@users.command("passwd")
@config_options
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the new password from standard input.")
def users_passwd(config_path: Path | None, data_dir: Path | None, name: str, password_stdin: bool) -> None:
    """Set a new password; every session of the user ends at once."""

    def change(store: UserStore) -> User:
        store.require(name)  # an unknown name fails before the password is asked for
        return store.set_password(name, passwords.hash_password(read_password(password_stdin)))

    _change(config_path, data_dir, change, "New password for {user}; its sessions are signed out")


@users.command("disable")
@config_options
@click.argument("name")
def users_disable(config_path: Path | None, data_dir: Path | None, name: str) -> None:
    """Stop a user from signing in; every session of theirs ends at once."""
    _change(
        config_path,
        data_dir,
        lambda store: store.set_disabled(name, True),
        "Disabled {user}; its sessions are signed out",
    )


@users.command("enable")
@config_options
@click.argument("name")
def users_enable(config_path: Path | None, data_dir: Path | None, name: str) -> None:
    """Let a disabled user sign in again."""
    _change(config_path, data_dir, lambda store: store.set_disabled(name, False), "Enabled {user}")


@users.command("role")
@config_options
@click.argument("name")
@click.argument("role", type=click.Choice(ROLES))
def users_role(config_path: Path | None, data_dir: Path | None, name: str, role: str) -> None:
    """Make a user an admin or a plain user (seen by the next request)."""
    _change(config_path, data_dir, lambda store: store.set_role(name, role), "{user}")


@users.command("totp")
@config_options
@click.argument("name")
@click.option("--disable", is_flag=True, help="Remove the second factor instead.")
def users_totp(config_path: Path | None, data_dir: Path | None, name: str, disable: bool) -> None:
    """Turn on a TOTP second factor: prints the otpauth:// URI and a QR code to scan.

    Running it again replaces the secret: the old authenticator entry stops working.
    """
    if disable:
        _change(config_path, data_dir, lambda store: store.set_totp(name, None), "Second factor removed: {user}")
        return
    with _users(config_path, data_dir) as (store, settings):
        before = store.require(name)
        secret = totp.new_secret()
        user = store.set_totp(name, secret)
    if before.totp_secret:
        console.print("[yellow]The previous secret is replaced: remove the old entry from the authenticator.[/]")
    issuer = f"ARK {settings.edge.domain}" if settings.edge.domain else "ARK"
    uri = totp.otpauth_uri(secret, user.name, issuer)
    click.echo(qr_text(uri, level="M"))
    click.echo(uri)
    click.echo(f"Secret (to type in instead): {secret}")
    console.print(f"Second factor on for {_describe(user)}: scan the code, then sign in with the app's code.")
