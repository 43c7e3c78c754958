"""`ark users`: the people who sign in to the console (and, through Nginx, to every site).

These commands write ARK's database directly, not through a running ARK: the first admin can be made
before `ark up`, and a change is seen by the next request anyway (every session check reads the
database). Passwords come from the terminal (asked twice) or, with --password-stdin, from a pipe;
never from the command line, where other users and the shell history would see them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from ark.auth import passwords, totp
from ark.auth.users import ROLES, User, UserStore, default_email
from ark.cli.admin import limit_options
from ark.cli.common import (
    Table,
    call_gateway,
    config_options,
    make_console,
    print_json,
    qr_text,
    settings_or_exit,
)
from ark.config import Settings
from ark.store import Store

console = make_console()
TOTP_TRIES = 3  # codes asked for at enrolment: room for a typo, not for guessing


@contextmanager
def _users(config_path: Path | None, data_dir: Path | None) -> Iterator[tuple[UserStore, Settings]]:
    """The user store of the configured database (migrated on the way in)."""
    settings = settings_or_exit(config_path, data_dir)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        store = Store.open(settings)
    except OSError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        yield UserStore(store.engine), settings
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
            email = default_email(name, settings.edge.domain)
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
        print_json(out)
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


@users.command("limits")
@config_options
@limit_options
@click.argument("name")
@click.option("--block/--unblock", "blocked", default=None, help="Refuse (or accept again) requests made for them.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def users_limits(
    config_path: Path | None,
    data_dir: Path | None,
    fields: dict[str, Any],
    name: str,
    blocked: bool | None,
    as_json: bool,
) -> None:
    """Show or set a person's budget and limits (like a key's), for the requests a UI makes for them.

    NAME is the user's name or e-mail. With no option, shows them. The running gateway applies them at once;
    they count what Open WebUI (through its service key) and the console send for that person.
    """
    if blocked is not None:
        fields["blocked"] = blocked
    if fields:
        person = call_gateway(config_path, data_dir, "POST", "/user/update", body={"user": name, **fields})
    else:
        person = call_gateway(config_path, data_dir, "GET", "/user/info", query={"user": name})
    if as_json:
        print_json(person)
        return
    table = Table("user", "e-mail", "budget", "spent", "tokens", "rpm", "tpm", "parallel", "models", "blocked")
    budget = "-" if person["max_budget"] is None else f"{person['max_budget']:g}"
    if person["budget_duration"]:
        budget += f" / {person['budget_duration']}"
    tokens = str(person["tokens_used"])
    if person["max_tokens_budget"] is not None:
        tokens += f" of {person['max_tokens_budget']}"
    table.add_row(
        person["user"],
        person["email"],
        budget,
        f"{person['spend']:.4f}",
        tokens,
        *("-" if person[k] is None else str(person[k]) for k in ("rpm_limit", "tpm_limit", "max_parallel_requests")),
        ",".join(person["models"]) or "all",
        "yes" if person["blocked"] else "no",
    )
    make_console().print(table)


@users.command("totp")
@config_options
@click.argument("name")
@click.option("--disable", is_flag=True, help="Remove the second factor instead.")
def users_totp(config_path: Path | None, data_dir: Path | None, name: str, disable: bool) -> None:
    """Turn on a TOTP second factor: scan its QR code, then enter a code from the app.

    The secret is stored only when a code entered matches it (up to 3 tries), so a failed scan locks
    nobody out: until then a previous secret stays in force. The code entered is used up by this: sign
    in with a later one. A script can drive it: read the secret from the line "Secret (to type in
    instead): ..." and write a code of it to standard input.
    """
    if disable:
        _change(config_path, data_dir, lambda store: store.remove_totp(name), "Second factor removed: {user}")
        return
    # The database is closed while the user scans and types: a person may take minutes over it.
    with _users(config_path, data_dir) as (store, settings):
        before = store.require(name)
    secret = totp.new_secret()
    _show_secret(secret, before.name, f"ARK {settings.edge.domain}" if settings.edge.domain else "ARK")
    if before.totp_secret:
        console.print(
            f"[yellow]{before.name} has a second factor already: the old secret stays in force until a code"
            " of this new one is entered.[/]"
        )
    step = _prove(secret)
    if step is None:
        kept = "; the previous secret stays in force" if before.totp_secret else ""
        raise click.ClickException(f"no code from the app matched the new secret: nothing was stored{kept}")
    _change(
        config_path,
        data_dir,
        lambda store: store.set_totp(name, secret, step),
        "Second factor on for {user}: sign in with a later code",
    )
    if before.totp_secret:
        console.print("[yellow]The previous secret is replaced: remove the old entry from the authenticator.[/]")


def _show_secret(secret: str, account: str, issuer: str) -> None:
    """The new secret as the app takes it: a QR code of the otpauth:// URI, the URI, the secret to type in."""
    uri = totp.otpauth_uri(secret, account, issuer)
    click.echo(qr_text(uri, level="M"))
    click.echo(uri)
    click.echo(f"Secret (to type in instead): {secret}")


def _clock() -> float:
    return time.time()


def _prove(secret: str) -> int | None:
    """The TOTP step of a code that matches the new ``secret``, or None when none did.

    The code is asked for, up to ``TOTP_TRIES`` times. The rules are sign-in's: one step of clock
    drift either way.
    """
    for attempt in range(1, TOTP_TRIES + 1):
        try:
            code = str(click.prompt("Code shown by the app", show_default=False))
        except click.Abort:  # Ctrl-C or the end of the input: give up, storing nothing
            click.echo()
            return None
        step = totp.match(secret, code, _clock(), None)
        if step is not None:
            return step
        if attempt < TOTP_TRIES:
            console.print(
                f"[yellow]That code does not match (is the phone's clock right?). Tries left: {TOTP_TRIES - attempt}[/]"
            )
    return None
