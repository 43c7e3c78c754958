"""How a setting is declared: once, as a field of a settings class, with its type, default and help.

A section is a frozen dataclass marked :func:`section`; each of its fields is a :func:`setting`::

    @section
    class GatewaySettings:
        \"\"\"The OpenAI-compatible API.\"\"\"           # the section's intro in the docs and the template

        listen: Address = setting(HostPort(), "127.0.0.1:4000", "Address of the API.")

A parent holds sections with :func:`table` (``[gateway]``), :func:`tables` (``[engines.NAME]``, one per
name) or :func:`mapping` (``[aliases]``, free keys). The root, :class:`ark.config.schema.Settings`, is the
one list of sections: the loader (file and environment), the environment check, ``ark init``'s file and
docs/configuration.md all walk it, so a new section is its class and one line there. mypy checks each
field's annotation against its type (``HostPort`` parses to ``Address``).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, dataclass_transform, overload

from ark.config.types import Type

T = TypeVar("T")
C = TypeVar("C", bound=type)

_SETTING = "ark.setting"  # field metadata keys
_CHILD = "ark.child"


@dataclass(frozen=True)
class Setting:
    """One setting: its key in the file, type, default as written in the file (None: none) and help."""

    key: str
    type: Type[Any]
    default: Any
    help: str
    kinds: tuple[str, ...] | None = None  # the values of the section's kind setting it applies to; None: all
    required: bool = False


@dataclass(frozen=True)
class Scope:
    """Where a table is being loaded, for the checks a section adds (``section(complete=...)``)."""

    file: Path | None
    label: str  # "[engines.x]"
    data_dir: Path
    loaded: Mapping[str, Any]  # the sections loaded before this one, by name ("engines" before "models")

    def where(self, key: str) -> str:
        return f"{self.file}: {self.label} {key}"


Complete = Callable[[dict[str, Any], Scope], dict[str, Any]]


@dataclass(frozen=True)
class Child:
    """How a parent holds a section (``table``/``tables``) or a map of free keys (``mapping``)."""

    shape: Literal["table", "tables", "mapping"]  # [name], [name.NAME], [name] with free keys
    cls: type | None = None  # the section class (table, tables)
    value: Type[Any] | None = None  # the type of each value (mapping)
    env: bool = True  # whether the environment may set its settings
    label: str = "NAME"  # what the docs call an entry's name (tables)
    quoted: bool = False  # entries are written [name."ID"] (tables)
    default: Mapping[str, Mapping[str, Any]] | None = None  # the entries used when the file has none
    limit: int | None = None  # most entries (tables)
    check: Callable[[dict[str, Any], Scope], None] | None = None  # a rule across entries (mapping)
    doc: str = ""  # intro of a mapping (a section's is its docstring)
    example: str = ""  # a TOML line shown under a mapping's intro
    name: str = ""  # the field's name, filled in by section()


@dataclass(frozen=True)
class SectionInfo:
    """What :func:`section` learnt of a class: its settings and children, in declaration order."""

    doc: str
    settings: tuple[Setting, ...]
    children: tuple[Child, ...]
    plain: tuple[str, ...]  # fields that are no setting: an entry's name ([engines.NAME] -> name), config_path
    kind: str | None  # the setting that says which ``kinds`` apply (engines: "kind")
    noun: str  # an entry in messages: "not a setting of a openai engine"
    complete: Complete | None

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(s.key for s in self.settings) + tuple(c.name for c in self.children)


def setting(
    type: Type[T], default: Any, help: str, *, kinds: tuple[str, ...] | None = None, required: bool = False
) -> T:
    """A field that is a setting. ``default`` is written as in the file ("8MiB"); the field's own default
    is its parsed value, so ``GatewaySettings()`` holds every default."""
    meta = {_SETTING: Setting("", type, default, help, kinds, required)}
    if required:
        return cast(T, dataclasses.field(metadata=meta))
    value = None if default is None else type.parse(default)
    if value.__class__.__hash__ is None:  # a dict: a fresh one per instance
        return cast(T, dataclasses.field(default_factory=lambda: type.parse(default), metadata=meta))
    return cast(T, dataclasses.field(default=value, metadata=meta))


def table(cls: type[T]) -> T:
    """A field that is the section ``cls`` as one table, ``[field]``; environment ``ARK_<FIELD>_<KEY>``."""
    _nested(cls, plain=0)
    return dataclasses.field(default_factory=cls, metadata={_CHILD: Child("table", cls)})


def tables(
    cls: type[T],
    *,
    env: bool = True,
    label: str = "NAME",
    quoted: bool = False,
    default: Mapping[str, Mapping[str, Any]] | None = None,
    limit: int | None = None,
) -> tuple[T, ...]:
    """A field holding one ``cls`` per table ``[field.NAME]``, NAME going to ``cls``'s one plain field;
    environment ``ARK_<FIELD>_<NAME>_<KEY>`` for the tables in use (when ``env``)."""
    _nested(cls, plain=1)
    child = Child("tables", cls, env=env, label=label, quoted=quoted, default=default, limit=limit)
    return cast(tuple[T, ...], dataclasses.field(default=(), metadata={_CHILD: child}))


def mapping(
    value: Type[T], doc: str, *, example: str = "", check: Callable[[dict[str, Any], Scope], None] | None = None
) -> dict[str, T]:
    """A field that is a table of free keys, each value of type ``value`` (file only)."""
    child = Child("mapping", value=value, env=False, check=check, doc=doc, example=example)
    return cast(dict[str, T], dataclasses.field(default_factory=dict, metadata={_CHILD: child}))


def _nested(cls: type, plain: int) -> None:
    """Sections hang from the root only (one level: ``[gateway]``, ``[engines.NAME]``), and an entry of
    ``tables`` has one plain field, for its name."""
    declared = info(cls)
    if declared.children or len(declared.plain) != plain:
        raise TypeError(f"{cls.__name__}: a section has settings only, and {plain} field(s) that are no setting")


@overload
def section(cls: C, /) -> C: ...
@overload
def section(*, kind: str | None = None, noun: str = "", complete: Complete | None = None) -> Callable[[C], C]: ...
@dataclass_transform(frozen_default=True, kw_only_default=True)
def section(cls: Any = None, /, *, kind: str | None = None, noun: str = "", complete: Complete | None = None) -> Any:
    """Make ``cls`` a frozen, keyword-only dataclass whose fields are settings and children.

    ``kind`` names the setting that decides which settings apply (``setting(..., kinds=...)``);
    ``complete(values, scope)`` adds the section's own rules and derived defaults before it is built."""

    def declare(cls: Any) -> Any:
        doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")
        cls = dataclasses.dataclass(frozen=True, kw_only=True)(cls)
        settings, children, plain = [], [], []
        for f in dataclasses.fields(cls):
            if _SETTING in f.metadata:
                settings.append(dataclasses.replace(f.metadata[_SETTING], key=f.name))
            elif _CHILD in f.metadata:
                children.append(dataclasses.replace(f.metadata[_CHILD], name=f.name))
            else:
                plain.append(f.name)
        if kind is not None and kind not in [s.key for s in settings]:
            raise TypeError(f"{cls.__name__}: kind={kind!r} is not one of its settings")
        if kind is None and any(s.kinds is not None for s in settings):
            raise TypeError(f"{cls.__name__}: settings with kinds= need @section(kind=...)")
        cls.__ark_section__ = SectionInfo(
            doc=doc,
            settings=tuple(settings),
            children=tuple(children),
            plain=tuple(plain),
            kind=kind,
            noun=noun or cls.__name__.removesuffix("Settings").lower(),
            complete=complete,
        )
        return cls

    return declare if cls is None else declare(cls)


def info(cls: type) -> SectionInfo:
    """The declaration of a :func:`section` class."""
    found = cls.__dict__.get("__ark_section__")
    if not isinstance(found, SectionInfo):
        raise TypeError(f"{cls.__name__} is not declared with @section")
    return found


def every_setting(cls: type) -> Iterator[tuple[tuple[str, ...], Setting]]:
    """(path, setting) for every setting under ``cls``: ``(("gateway",), listen)``, ``(("engines",), kind)``."""
    declared = info(cls)
    for s in declared.settings:
        yield (), s
    for child in declared.children:
        if child.cls is not None:
            yield from (((child.name, *path), s) for path, s in every_setting(child.cls))


def env_name(*parts: str) -> str:
    """``ARK_GATEWAY_LISTEN`` for ("gateway", "listen"); names are upper-cased, other characters become _."""
    return "_".join(["ARK", *(re.sub(r"[^A-Za-z0-9]", "_", p).upper() for p in parts)])


def env_forms(cls: type) -> list[tuple[str, str]]:
    """The environment variables under ``cls`` as (form, what it sets), for the docs, the template and the
    message about a variable that names nothing: ``("ARK_ENGINES_<NAME>_<KEY>", "[engines.NAME]")``."""
    declared = info(cls)
    forms = [("ARK_<KEY>", "a top-level setting")] if declared.settings else []
    if any(child.shape == "table" for child in declared.children):
        forms.append(("ARK_<SECTION>_<KEY>", "a setting of [SECTION]"))
    for child in declared.children:
        if child.shape == "tables" and child.env:
            forms.append((env_form(child), f"a setting of [{child.name}.{child.label}]"))
    return forms


def env_form(child: Child) -> str:
    """The variables of a ``tables`` child's entries: ``ARK_ENGINES_<NAME>_<KEY>``."""
    return f"{env_name(child.name)}_<{child.label}>_<KEY>"


def env_example(child: Child) -> str:
    """A variable of an entry of a ``tables`` child: ``ARK_ENGINES_OLLAMA_URL``."""
    assert child.cls is not None
    name = next(iter(child.default or {"my-name": {}}))
    key = next(s.key for s in info(child.cls).settings if not s.required)
    return env_name(child.name, name, key)


def show(value: Any) -> str:
    """A value as a message quotes it: strings in quotes, tables and arrays by name."""
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)
