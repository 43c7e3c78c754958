"""`ark users`: made, listed and changed in the database directly, passwords never on the command line."""

from __future__ import annotations

import asyncio
import io
import re
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from ark.auth import passwords, totp
from ark.auth.service import AuthService
from ark.auth.users import User, UserStore
from ark.cli.main import main
from ark.config import load_settings
from ark.store import Store

PASSWORD = "correct-horse-1"
NOW = 1_700_000_000.0  # the enrolment's frozen clock: the codes typed in are computed for it
SECRET_LINE = re.compile(r"^Secret \(to type in instead\): ([A-Z2-7]+)$", re.MULTILINE)


def run(data: Path, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, ["users", *args, "--data-dir", str(data)], input=input)


def listed(data: Path) -> dict[str, dict[str, object]]:
    result = run(data, "list", "--json")
    assert result.exit_code == 0, result.output
    return {u["name"]: u for u in orjson.loads(result.output)}


def stored_user(data: Path, name: str) -> User:
    store = Store.open(load_settings(env={"ARK_DATA_DIR": str(data)}))
    try:
        return UserStore(store.engine).require(name)
    finally:
        store.close()


def stored_hash(data: Path, name: str) -> str:
    return stored_user(data, name).password_hash


def freeze(monkeypatch: pytest.MonkeyPatch) -> None:
    """`ark users totp` checks codes at NOW."""
    monkeypatch.setattr("ark.cli.users._clock", lambda: NOW)


class Typist(io.RawIOBase):
    """Standard input for `ark users totp`, typed as a script would: once the command asks for a code, it
    reads the secret from the line the command printed and types ``answer(secret)``."""

    def __init__(self, answer: Callable[[str], str]) -> None:
        self._answer, self._typed, self.secret = answer, b"", ""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if not buffer:
            return 0
        if not self.secret:  # the first read: the command is at its prompt, the secret printed above
            sys.stdout.flush()
            captured = sys.stdout.buffer  # CliRunner's capture of the output
            assert isinstance(captured, io.BytesIO)
            printed = captured.getvalue().decode()
            found = SECRET_LINE.search(printed)
            assert found, printed
            self.secret = found.group(1)
            self._typed = self._answer(self.secret).encode()
        n = min(len(buffer), len(self._typed))
        buffer[:n], self._typed = self._typed[:n], self._typed[n:]
        return n


def enrol(data: Path, name: str, answer: Callable[[str], str]) -> tuple[Result, str]:
    """`ark users totp NAME`, answering its prompt with ``answer(the secret it printed)``; and that secret."""
    typist = Typist(answer)
    result = CliRunner().invoke(main, ["users", "totp", name, "--data-dir", str(data)], input=io.BufferedReader(typist))
    return result, typist.secret


def code(secret: str, steps_later: int = 0) -> str:
    return totp.code_at(secret, NOW + steps_later * totp.STEP_S)


def wrong(secret: str) -> str:
    """A well-formed code that none of the steps around NOW shows."""
    shown = {code(secret, steps) for steps in (-1, 0, 1)}
    return next(c for c in (f"{n:06d}" for n in range(1_000_000)) if c not in shown)


def sign_in(data: Path, name: str, code: str, now: float) -> str:
    """The outcome of a console sign-in with ``code`` at ``now``, through the real service."""
    settings = load_settings(env={"ARK_DATA_DIR": str(data)})
    store = Store.open(settings)
    try:
        service = AuthService(UserStore(store.engine), b"k" * 32, settings.auth, clock=lambda: now)
        return asyncio.run(service.login(name, PASSWORD, code, "10.0.0.1", "test")).outcome
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


def test_totp_shows_the_secret_and_stores_it_once_a_code_matches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(tmp_path, "add", "carol", "--password-stdin", input=PASSWORD).exit_code == 0
    freeze(monkeypatch)
    first, secret = enrol(tmp_path, "carol", lambda secret: code(secret) + "\n")
    assert first.exit_code == 0, first.output
    uri = re.search(r"otpauth://totp/ARK%3Acarol\?secret=([A-Z2-7]{32})&issuer=ARK\S*", first.output)
    assert uri and uri.group(1) == secret and "█" in first.output
    assert "Code shown by the app: " in first.output
    assert "Second factor on for carol <carol@localhost> (user, TOTP)" in first.output
    carol = stored_user(tmp_path, "carol")
    assert carol.totp_secret == secret and carol.totp_last_step == totp.step_at(NOW)

    # The code that proved the secret is used up; the app's next one signs in, once.
    assert sign_in(tmp_path, "carol", code(secret), NOW) == "failed"
    assert sign_in(tmp_path, "carol", code(secret, 1), NOW + 30) == "ok"
    assert sign_in(tmp_path, "carol", code(secret, 1), NOW + 30) == "failed"

    removed = run(tmp_path, "totp", "carol", "--disable")
    assert removed.exit_code == 0 and "Second factor removed: carol" in removed.output
    assert listed(tmp_path)["carol"]["totp"] is False
    assert stored_user(tmp_path, "carol").totp_last_step is None


def test_wrong_codes_store_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run(tmp_path, "add", "dora", "--password-stdin", input=PASSWORD).exit_code == 0
    freeze(monkeypatch)
    refused, _ = enrol(  # the right code comes too late
        tmp_path, "dora", lambda secret: f"{wrong(secret)}\n12345\nnot-a-code\n{code(secret)}\n"
    )
    assert refused.exit_code == 1, refused.output
    assert "Tries left: 2" in refused.output and "Tries left: 1" in refused.output
    assert "no code from the app matched the new secret: nothing was stored" in refused.output
    assert listed(tmp_path)["dora"]["totp"] is False

    ended = run(tmp_path, "totp", "dora", input="")  # the input ends before a code: the same
    assert ended.exit_code == 1 and "nothing was stored" in ended.output
    assert listed(tmp_path)["dora"]["totp"] is False
    assert sign_in(tmp_path, "dora", "", NOW) == "ok"  # still no second factor to give


def test_the_old_secret_stays_until_the_new_one_is_proven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run(tmp_path, "add", "eve", "--password-stdin", input=PASSWORD).exit_code == 0
    freeze(monkeypatch)
    enrolled, first = enrol(tmp_path, "eve", lambda secret: code(secret) + "\n")
    assert enrolled.exit_code == 0, enrolled.output
    before = stored_user(tmp_path, "eve")

    refused, _ = enrol(tmp_path, "eve", lambda secret: f"{wrong(secret)}\n" * 3)
    assert refused.exit_code == 1
    assert "the old secret stays in force until a code of this new one is entered" in refused.output
    assert "nothing was stored; the previous secret stays in force" in refused.output
    kept = stored_user(tmp_path, "eve")
    assert (kept.totp_secret, kept.totp_last_step) == (first, before.totp_last_step) == (first, totp.step_at(NOW))
    assert sign_in(tmp_path, "eve", code(first, 1), NOW + 30) == "ok"

    replaced, second = enrol(tmp_path, "eve", lambda secret: f"{wrong(secret)}\n{code(secret, 1)}\n")  # a typo first
    assert replaced.exit_code == 0, replaced.output
    assert "Tries left: 2" in replaced.output and "previous secret is replaced" in replaced.output
    assert second != first and stored_user(tmp_path, "eve").totp_secret == second
    assert sign_in(tmp_path, "eve", code(first, 2), NOW + 60) == "failed"  # the old app entry is dead
    assert sign_in(tmp_path, "eve", code(second, 1), NOW + 30) == "failed"  # used up by the enrolment
    assert sign_in(tmp_path, "eve", code(second, 2), NOW + 60) == "ok"


def test_a_code_one_step_behind_is_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run(tmp_path, "add", "finn", "--password-stdin", input=PASSWORD).exit_code == 0
    freeze(monkeypatch)
    drifted, secret = enrol(tmp_path, "finn", lambda secret: code(secret, -1) + "\n")  # the phone's clock is behind
    assert drifted.exit_code == 0, drifted.output
    assert "Tries left" not in drifted.output
    assert stored_user(tmp_path, "finn").totp_last_step == totp.step_at(NOW) - 1
    assert sign_in(tmp_path, "finn", code(secret), NOW) == "ok"  # a later step than the one used up


def test_totp_has_no_code_option(tmp_path: Path) -> None:
    """A code cannot be known before the command draws the secret: a script answers the prompt instead."""
    assert run(tmp_path, "add", "gina", "--password-stdin", input=PASSWORD).exit_code == 0
    given = run(tmp_path, "totp", "gina", "--code", "123456")
    assert given.exit_code == 2 and "No such option" in given.output
    assert listed(tmp_path)["gina"]["totp"] is False


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
    monkeypatch.setattr("ark.cli.users._terminal", lambda: True)
    differ = run(tmp_path, "add", "frank", input=f"{PASSWORD}\nsomething-else\n")
    assert differ.exit_code == 1 and "the two passwords differ" in differ.output
    same = run(tmp_path, "add", "frank", input=f"{PASSWORD}\n{PASSWORD}\n")
    assert same.exit_code == 0 and PASSWORD not in same.output
    assert passwords.verify_password(stored_hash(tmp_path, "frank"), PASSWORD)
