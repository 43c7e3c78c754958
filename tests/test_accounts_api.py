"""Users over the management API, in process (ark.auth.api): the last enabled admin is kept even when two
changes race, a user is found by name before e-mail, and the store's refusals come back as 400s naming the
field."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from ark.auth import passwords
from ark.auth.api import Accounts
from ark.auth.users import UserStore
from ark.errors import InvalidRequest
from ark.store import Store
from ark.wire import Request
from tests.conftest import settings_for


class Sent:
    status, body = 0, b""

    async def send(self, status: int, body: bytes, headers: Any = None) -> None:
        self.status, self.body = status, body


def run(work: Any) -> Any:
    """On a thread of its own: a module's Chromium (playwright's sync API) may hold this thread's loop."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, work).result(timeout=60)


@pytest.fixture
def accounts(tmp_path: Path) -> Any:
    store = Store.open(settings_for(tmp_path, ""))
    users = UserStore(store.engine)
    hashed = passwords.hash_password("a long password 1")
    for name, role in (("ada", "admin"), ("bob", "admin"), ("cy", "user")):
        users.add(name, f"{name}@example.com", name, role, hashed)
    users.add("ada@example.com", "other@example.com", "tricky", "user", hashed)  # a name that looks like ada's e-mail

    async def changed() -> None:
        return None

    yield Accounts(users, "example.com", changed), users
    store.close()


def call(accounts: Accounts, path: str, body: dict[str, Any]) -> Sent:
    sent = Sent()
    request = Request("POST", path, "", {}, orjson.dumps(body), "127.0.0.1")
    run(accounts.routes()[("POST", path)](request, sent))  # type: ignore[arg-type]
    return sent


class Racing:
    """The user store, with each write held until a second check has read the users (or a second passed):
    without a lock, both changes would check before either writes."""

    def __init__(self, users: UserStore) -> None:
        self.users, self.reads, self.second_check = users, 0, threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.users, name)

    def list_users(self) -> Any:
        self.reads += 1
        if self.reads >= 4:  # each change reads twice before it writes (whom, then the admins)
            self.second_check.set()
        return self.users.list_users()

    def set_disabled(self, *args: Any) -> Any:
        self.second_check.wait(1.0)
        return self.users.set_disabled(*args)

    def set_role(self, *args: Any) -> Any:
        self.second_check.wait(1.0)
        return self.users.set_role(*args)


def test_two_racing_changes_cannot_leave_no_admin(accounts: Any) -> None:
    api, users = accounts
    api.store = Racing(users)

    async def both() -> list[Any]:
        handlers = api.routes()
        outcomes = []
        for path, body in (("/user/disable", {"user": "ada"}), ("/user/role", {"user": "bob", "role": "user"})):
            request = Request("POST", path, "", {}, orjson.dumps(body), "127.0.0.1")
            outcomes.append(handlers[("POST", path)](request, Sent()))
        return await asyncio.gather(*outcomes, return_exceptions=True)

    outcomes = run(both())
    refused = [o for o in outcomes if isinstance(o, InvalidRequest)]
    assert len(refused) == 1 and "only enabled admin" in str(refused[0])
    admins = [u for u, _ in users.list_users() if u.role == "admin" and not u.disabled]
    assert len(admins) == 1


def test_a_user_is_named_by_name_before_e_mail(accounts: Any) -> None:
    api, users = accounts
    assert call(api, "/user/disable", {"user": "ada@example.com"}).status == 200
    assert users.require("ada@example.com").disabled and not users.require("ada").disabled
    assert call(api, "/user/disable", {"user": "CY@example.com"}).status == 200  # no such name: the e-mail
    assert users.require("cy").disabled


def test_the_stores_refusals_name_the_field(accounts: Any) -> None:
    api, _ = accounts
    body = {"name": "dee", "password": "a long password 1"}
    with pytest.raises(InvalidRequest) as caught:
        call(api, "/user/new", {**body, "email": "not an address"})
    assert caught.value.param == "email"
    with pytest.raises(InvalidRequest) as caught:
        call(api, "/user/new", {**body, "name": "Bad Name"})
    assert caught.value.param == "name"
    with pytest.raises(InvalidRequest) as caught:
        call(api, "/user/new", {**body, "password": "short"})
    assert caught.value.param == "password"
    made = call(api, "/user/new", {**body, "role": "user"})
    assert made.status == 200 and orjson.loads(made.body)["email"] == "dee@example.com"
