"""`ark users`: made, listed and changed in the database directly, passwords never on the command line."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from ark.auth import passwords
from ark.auth.users import UserStore
from ark.cli import main
from ark.config import load_settings
from ark.store import Store

PASSWORD = "correct-horse-1"


def run(data: Path, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, ["users", *args, "--data-dir", str(data)], input=input)


def listed(data: Path) -> dict[str, dict[str, object]]:
    result = run(data, "list", "--json")
    assert result.exit_code == 0, result.output
    return {u["name"]: u for u in orjson.loads(result.output)}


def stored_hash(data: Path, name: str) -> str:
    store = Store.open(load_settings(env={"ARK_DATA_DIR": str(data)}))
    try:
        return UserStore(store.engine).require(name).password_hash
    finally:
        store.close()


def test_add_list_and_change_users(tmp_path: Path) -> None:
    added = run(
        tmp_path,
        "add",
        "Alice",
        "--role",
        "admin",
        "--display-name",
        "Alice L",
        "--password-stdin",
        input=PASSWORD + "\n",
    )
    assert added.exit_code == 0, added.output
    assert "alice <alice@localhost> (admin)" in added.output and PASSWORD not in added.output
    assert passwords.verify_password(stored_hash(tmp_path, "alice"), PASSWORD)  # the newline is not part of it
    assert run(tmp_path, "add", "bob@example.org", "--password-stdin", input=PASSWORD).exit_code == 0
    users = listed(tmp_path)
    assert users["alice"]["display_name"] == "Alice L" and users["alice"]["role"] == "admin"
    assert users["bob@example.org"]["email"] == "bob@example.org" and users["bob@example.org"]["totp"] is False

    assert run(tmp_path, "role", "alice", "user").exit_code == 0
    disabled = run(tmp_path, "disable", "bob@example.org")
    assert disabled.exit_code == 0 and "Disabled bob@example.org" in disabled.output
    users = listed(tmp_path)
    assert users["alice"]["role"] == "user" and users["bob@example.org"]["disabled"] is True
    assert run(tmp_path, "enable", "bob@example.org").exit_code == 0
    assert listed(tmp_path)["bob@example.org"]["disabled"] is False

    old = stored_hash(tmp_path, "alice")
    assert run(tmp_path, "passwd", "alice", "--password-stdin", input="new-password-2\n").exit_code == 0
    new = stored_hash(tmp_path, "alice")
    assert new != old and passwords.verify_password(new, "new-password-2")
    table = run(tmp_path, "list")
    assert table.exit_code == 0 and "alice" in table.output


def test_totp_prints_a_uri_and_a_qr_code(tmp_path: Path) -> None:
    assert run(tmp_path, "add", "carol", "--password-stdin", input=PASSWORD).exit_code == 0
    first = run(tmp_path, "totp", "carol")
    assert first.exit_code == 0, first.output
    uri = re.search(r"otpauth://totp/ARK%3Acarol\?secret=([A-Z2-7]{32})&issuer=ARK\S*", first.output)
    assert uri and "█" in first.output and f"Secret (to type in instead): {uri.group(1)}" in first.output
    assert listed(tmp_path)["carol"]["totp"] is True
    again = run(tmp_path, "totp", "carol")
    assert "previous secret is replaced" in again.output and uri.group(1) not in again.output
    removed = run(tmp_path, "totp", "carol", "--disable")
    assert removed.exit_code == 0 and "Second factor removed: carol" in removed.output
    assert listed(tmp_path)["carol"]["totp"] is False


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("add", "dave", "--password-stdin"), "short\n", "at least 8 characters"),
        (("add", "dave"), None, "pipe it in with --password-stdin"),
        (("add", "bad name", "--password-stdin"), PASSWORD, "is not a user name"),
        (("add", "dave", "--email", "nope", "--password-stdin"), PASSWORD, "is not an e-mail address"),
        (("add", "dave", "--role", "root", "--password-stdin"), PASSWORD, "Invalid value for '--role'"),
        (("passwd", "nobody", "--password-stdin"), PASSWORD, "no user named 'nobody'"),
        (("disable", "nobody"), None, "no user named 'nobody'"),
        (("totp", "nobody"), None, "no user named 'nobody'"),
    ],
)
def test_refusals_change_nothing(tmp_path: Path, args: tuple[str, ...], stdin: str | None, message: str) -> None:
    result = run(tmp_path, *args, input=stdin)
    assert result.exit_code != 0 and message in result.output, result.output
    assert "dave" not in listed(tmp_path)


def test_a_name_is_added_once(tmp_path: Path) -> None:
    assert run(tmp_path, "add", "erin", "--password-stdin", input=PASSWORD).exit_code == 0
    again = run(tmp_path, "add", "ERIN", "--password-stdin", input=PASSWORD)
    assert again.exit_code == 1 and "exists already" in again.output


def test_the_terminal_asks_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ark.cli_users._terminal", lambda: True)
    differ = run(tmp_path, "add", "frank", input=f"{PASSWORD}\nsomething-else\n")
    assert differ.exit_code == 1 and "the two passwords differ" in differ.output
    same = run(tmp_path, "add", "frank", input=f"{PASSWORD}\n{PASSWORD}\n")
    assert same.exit_code == 0 and PASSWORD not in same.output
    assert passwords.verify_password(stored_hash(tmp_path, "frank"), PASSWORD)
