"""One error tree: every exception ARK defines derives from ArkError or is on a short list of reasons, the
tree in ark/errors.py's docstring names every class, and decisions about an error go by its type."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import re
from types import ModuleType

import click
import pytest

import ark
from ark import errors
from ark.engines._http import upstream_errors
from ark.errors import ArkError, UpstreamError, UpstreamTimeout
from ark.wire import ConnectError, ConnectTimeout, Upstream

# Exceptions that are not ARK's deliberate errors, each with why. click.ClickException subclasses (the CLI's
# exits) need no entry: they are how the CLI reports ArkErrors, not errors of their own.
NOT_ARK_ERRORS = {
    # ark.wire is a transport: its failures are translated into ArkErrors by its callers
    # (ark.engines._http.upstream_errors, ark.admin_client.call, ark.status).
    "ark.wire.client.ConnectError",
    "ark.wire.client.ConnectTimeout",
    "ark.wire.client.ConnectionClosed",
    "ark.wire.client.ProtocolError",
    "ark.wire.client.ResponseTooLarge",
    "ark.wire.server.BodyTooLargeError",  # answered 413 by the server loop itself
    "ark.wire.server.HeadTooLargeError",  # answered 431 by the server loop itself
    "ark.wire.router.RouteError",  # a route declared wrong: a bug, raised while the app is built
    # the worker protocol's parser: a broken frame means a broken worker, which the engine restarts
    "ark.engines.frames.FrameError",
    # control flow inside a worker: the sampler's hook stops a generation held by a grammar; never leaves it
    "ark.engines.llama_worker.Cancelled",
    # a scheduler that never answers under simulation: a bug, like a failed assertion
    "ark.arbiter.virtual_loop.SimulationStuck",
    # the console's form refusal, rendered as a page with its status; ark.console is being rebuilt as a
    # component (issue 15, item 1), which brings it under ArkError
    "ark.console.web.BadInput",
}


# Not imported by the walk: the first runs the CLI, the others are scripts alembic runs in its own context.
_SCRIPTS = ("ark.__main__", "ark.store.migrations.")


def _modules() -> list[ModuleType]:
    names = [m.name for m in pkgutil.walk_packages(ark.__path__, "ark.") if not m.name.startswith(_SCRIPTS)]
    return [importlib.import_module(name) for name in ["ark", *names]]


def _defined_exceptions() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for module in _modules():
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == module.__name__:
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return list(found.values())


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def test_every_deliberate_error_derives_from_ark_error() -> None:
    exceptions = _defined_exceptions()
    assert len(exceptions) > 30, "the walk found too little: is every module importable?"
    stray = [
        _name(cls)
        for cls in exceptions
        if not issubclass(cls, ArkError)
        and not issubclass(cls, click.ClickException)
        and _name(cls) not in NOT_ARK_ERRORS
    ]
    assert not stray, f"derive these from ArkError (ark/errors.py), or list them in NOT_ARK_ERRORS with why: {stray}"
    names = {_name(cls) for cls in exceptions}
    assert names >= NOT_ARK_ERRORS, f"stale entries: {sorted(NOT_ARK_ERRORS - names)}"
    misfiled = [
        name for name in NOT_ARK_ERRORS if issubclass(next(c for c in exceptions if _name(c) == name), ArkError)
    ]
    assert not misfiled, f"these are ArkErrors now: take them off NOT_ARK_ERRORS: {misfiled}"


def _drawn_tree() -> dict[str, tuple[str | None, str]]:
    """Each class in errors.py's tree: its parent as drawn, and its line."""
    drawn: dict[str, tuple[str | None, str]] = {}
    above: list[tuple[int, str]] = []  # (column, name) of the lines that may be a parent of the next
    for line in (errors.__doc__ or "").splitlines():
        match = re.match(r"^( {4}[ │├└─]*)([A-Z]\w*)\b", line)
        if match is None:
            continue
        column, name = len(match[1]), match[2]
        above = [(c, n) for c, n in above if c < column]
        drawn[name] = (above[-1][1] if above else None, line)
        above.append((column, name))
    return drawn


def test_the_docstring_tree_names_every_ark_error_under_its_parent() -> None:
    drawn = _drawn_tree()
    assert drawn["ArkError"][0] is None
    problems = []
    for cls in (c for c in _defined_exceptions() if issubclass(c, ArkError) and c is not ArkError):
        if cls.__name__ not in drawn:
            problems.append(f"{_name(cls)} is not in the tree")
            continue
        parent, line = drawn[cls.__name__]
        if parent != cls.__bases__[0].__name__:
            problems.append(f"{cls.__name__} is drawn under {parent}, but derives from {cls.__bases__[0].__name__}")
        if cls.__module__ != "ark.errors" and cls.__module__ not in line:
            problems.append(f"{cls.__name__}: its line does not name its module, {cls.__module__}")
    assert not problems, problems


def test_an_engine_timeout_is_told_from_an_unreachable_engine_by_type_not_by_text() -> None:
    async def translate(exc: Exception) -> Exception:
        try:
            async with upstream_errors("e", "http://127.0.0.1:9/v1"):
                raise exc
        except Exception as translated:
            return translated
        raise AssertionError("nothing raised")

    async def main() -> None:
        # the words swapped on purpose: a timeout that does not say "within", a refusal that does
        timed_out = await translate(ConnectTimeout("gave up waiting"))
        refused = await translate(ConnectError("refused within a moment"))
        assert isinstance(timed_out, UpstreamTimeout)
        assert isinstance(refused, UpstreamError) and not isinstance(refused, UpstreamTimeout)

    asyncio.run(main())


def test_the_client_raises_connect_timeout_when_the_connect_does_not_finish(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def never(*args: object, **kwargs: object) -> None:
        await asyncio.sleep(3600)

    async def main() -> None:
        monkeypatch.setattr(asyncio.get_running_loop(), "create_connection", never)
        upstream = Upstream("http://127.0.0.1:9", connect_timeout=0.01)
        try:
            with pytest.raises(ConnectTimeout):
                await upstream.request("GET", "/")
        finally:
            upstream.close()

    asyncio.run(main())
