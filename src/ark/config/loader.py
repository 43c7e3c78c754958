"""Load ark.toml and the environment into typed, frozen settings, by walking their declaration.

Precedence is environment > file > default, for every setting. Every problem
is a :class:`~ark.errors.ConfigError` naming the file (or variable), the key,
the bad value and what was expected; nothing starts on a bad config. The loader
knows no section: it walks :class:`~ark.config.schema.Settings` (see
:mod:`ark.config.declare`), so a section declared there is read, checked and
overridable from the environment with no edit here.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, overload

from ark.config.declare import Child, Scope, SectionInfo, Setting, env_forms, env_name, info, show
from ark.config.edge import EdgeSettings as EdgeSettings  # the settings classes lived here: still importable
from ark.config.edge import FirewallSettings as FirewallSettings
from ark.config.edge import WireguardSettings as WireguardSettings
from ark.config.inference import EngineSettings as EngineSettings
from ark.config.inference import GpuSettings as GpuSettings
from ark.config.inference import ModelSettings as ModelSettings
from ark.config.schema import Settings
from ark.config.services import AuthSettings as AuthSettings
from ark.config.services import ConsoleSettings as ConsoleSettings
from ark.config.services import GatewaySettings as GatewaySettings
from ark.config.services import MonitorSettings as MonitorSettings
from ark.config.services import StoreSettings as StoreSettings
from ark.config.types import SecretStr
from ark.errors import ConfigError

S = TypeVar("S", bound=Settings)

ENV_ONLY = ("ARK_CONFIG",)  # read by the loader itself, not a setting of the file


def default_data_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "ark"


def find_config(config_path: Path | None, data_dir: Path | None, env: Mapping[str, str]) -> Path | None:
    """The file to read: --config, else $ARK_CONFIG, else DATA/ark.toml when it exists."""
    explicit = config_path or (Path(env["ARK_CONFIG"]).expanduser() if env.get("ARK_CONFIG") else None)
    if explicit is not None:
        return explicit
    guess = (data_dir or _env_data_dir(env) or default_data_dir(env)) / "ark.toml"
    return guess if guess.exists() else None


def _env_data_dir(env: Mapping[str, str]) -> Path | None:
    return Path(env["ARK_DATA_DIR"]).expanduser() if env.get("ARK_DATA_DIR") else None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a TOML file") from None
    except PermissionError:
        raise ConfigError(f"{path}: cannot read the config file (permission denied)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text, expected a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


@overload
def load_settings(
    *, config_path: Path | None = None, data_dir: Path | None = None, env: Mapping[str, str] | None = None
) -> Settings: ...
@overload
def load_settings(
    *,
    config_path: Path | None = None,
    data_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    schema: type[S],
) -> S: ...
def load_settings(
    *,
    config_path: Path | None = None,
    data_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    schema: type[Settings] = Settings,
) -> Settings:
    """Build the settings from (in order of precedence) the environment, the file and the defaults.

    ``config_path`` and ``data_dir`` are the CLI's ``--config`` / ``--data-dir`` and win over
    ``ARK_CONFIG`` / ``ARK_DATA_DIR``. ``schema`` is the root to load: :class:`Settings`, or (in a test)
    a subclass that declares more sections.
    """
    env = os.environ if env is None else env
    path = find_config(config_path, data_dir, env)
    doc = read_toml(path) if path is not None else {}
    return _Loader(path, doc, env).build(schema, data_dir)


def _label(path: tuple[str, ...]) -> str:
    return f"[{'.'.join(path)}]"


class _Loader:
    def __init__(self, path: Path | None, doc: dict[str, Any], env: Mapping[str, str]) -> None:
        self.path = path
        self.doc = doc
        self.env = env
        self.data_dir = Path()
        self.env_known: set[str] = set(ENV_ONLY)  # every variable that names a setting in use
        self.in_use: dict[str, tuple[str, list[str]]] = {}  # "ARK_ENGINES" -> ("engine", names) for messages

    # -- where a value came from, for error messages -------------------------------------------
    def _file_where(self, label: str, key: str) -> str:
        return f"{self.path}: {label + ' ' if label else ''}{key}"

    def _fail(self, where: str, value: Any, setting: Setting) -> ConfigError:
        secret = "key" in setting.key or isinstance(setting.type, SecretStr)
        shown = "<hidden>" if secret and isinstance(value, str) else show(value)
        return ConfigError(f"{where} = {shown}: expected {setting.type.expected}")

    def _value(self, setting: Setting, table: Mapping[str, Any], label: str, env_prefix: tuple[str, ...] | None) -> Any:
        var = env_name(*env_prefix, setting.key) if env_prefix is not None else ""
        if var:
            self.env_known.add(var)
        if var and var in self.env:
            raw, where = self.env[var], f"environment variable {var}"
        elif setting.key in table:
            raw, where = table[setting.key], self._file_where(label, setting.key)
        else:
            return None if setting.default is None else setting.type.parse(setting.default)
        try:
            return setting.type.parse(raw)
        except ValueError:
            raise self._fail(where, raw, setting) from None

    def _check_keys(self, table: Mapping[str, Any], known: tuple[str, ...], label: str) -> None:
        for key in table:
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                where = f"{self.path}: unknown key {label + ' ' if label else ''}{key}"
                raise ConfigError(where + (f' (did you mean "{hint[0]}"?)' if hint else f"; known: {', '.join(known)}"))

    def _table(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {show(value)}")
        return value

    # -- the walk ---------------------------------------------------------------------------------
    def build(self, schema: type[S], data_dir_arg: Path | None) -> S:
        declared = info(schema)
        values = self._settings(declared, self.doc, "", ())
        # data_dir decides where the rest lives (DATA/models...), so it is settled first
        data_dir = data_dir_arg or _env_data_dir(self.env) or values["data_dir"] or default_data_dir(self.env)
        self.data_dir = values["data_dir"] = Path(data_dir).absolute()
        values |= self._children(declared)
        self._check_env(schema)
        return schema(config_path=self.path, **values)

    def _settings(
        self, declared: SectionInfo, table: Mapping[str, Any], label: str, env_prefix: tuple[str, ...] | None
    ) -> dict[str, Any]:
        """The values of a table's settings, checked: known keys, required ones present, kinds respected."""
        self._check_keys(table, declared.keys, label)
        values = {s.key: self._value(s, table, label, env_prefix) for s in declared.settings}
        for s in declared.settings:
            if s.required and values[s.key] is None:
                raise ConfigError(f"{self._file_where(label, s.key)} is missing: expected {s.type.expected}")
        if declared.kind is None:
            return values
        kind = values[declared.kind]
        for s in declared.settings:
            if s.kinds is None or kind in s.kinds:
                continue
            var = env_name(*env_prefix, s.key) if env_prefix is not None else ""
            if s.key in table:
                raise ConfigError(f"{self._file_where(label, s.key)}: not a setting of a {kind} {declared.noun}")
            if var in self.env:
                raise ConfigError(f"environment variable {var}: not a setting of a {kind} {declared.noun}")
        return values

    def _children(self, root: SectionInfo) -> dict[str, Any]:
        """The root's sections and maps, in declaration order (a section's rule may look at earlier ones)."""
        loaded: dict[str, Any] = {}
        for child in root.children:
            raw, path = self.doc.get(child.name), (child.name,)
            prefix = path if child.env else None
            if child.shape == "table":
                loaded[child.name] = self._section(child, {} if raw is None else raw, path, prefix, loaded)
            elif child.shape == "tables":
                loaded[child.name] = self._entries(child, raw, path, prefix, loaded)
            else:
                loaded[child.name] = self._mapping(child, {} if raw is None else raw, path, loaded)
        return loaded

    def _section(
        self,
        child: Child,
        raw: Any,
        path: tuple[str, ...],
        env_prefix: tuple[str, ...] | None,
        loaded: Mapping[str, Any],
        name: str | None = None,
    ) -> Any:
        """One section: ``[gateway]``, or with ``name`` one entry of a ``tables`` child (``[engines.x]``)."""
        assert child.cls is not None
        declared = info(child.cls)
        label = _label(path) if name is None else _entry_label(child, path, name)
        table = self._table(raw, self._file_where("", label))
        values = self._settings(declared, table, label, env_prefix)
        if name is not None:
            values[declared.plain[0]] = name
        if declared.complete is not None:
            values = declared.complete(values, Scope(self.path, label, self.data_dir, loaded))
        return child.cls(**values)

    def _entries(
        self,
        child: Child,
        raw: Any,
        path: tuple[str, ...],
        env_prefix: tuple[str, ...] | None,
        loaded: Mapping[str, Any],
    ) -> tuple[Any, ...]:
        """One section per table under ``[engines]``; the child's defaults when the file has none."""
        assert child.cls is not None
        tables = self._table(raw, self._file_where("", _label(path))) if raw is not None else {}
        if not tables and child.default is not None:
            tables = dict(child.default)
        noun = info(child.cls).noun
        if child.limit is not None and len(tables) > child.limit:
            raise ConfigError(
                f"{self.path}: {_label(path)} declares {len(tables)} {noun}s, at most {child.limit} are supported"
            )
        if env_prefix is not None:
            self.in_use[env_name(*env_prefix)] = (noun, list(tables))
        return tuple(
            self._section(child, entry, path, None if env_prefix is None else (*env_prefix, name), loaded, name)
            for name, entry in tables.items()
        )

    def _mapping(self, child: Child, raw: Any, path: tuple[str, ...], loaded: Mapping[str, Any]) -> dict[str, Any]:
        """A table of free keys (``[aliases]``), each value of the child's type."""
        assert child.value is not None
        label = _label(path)
        table = self._table(raw, self._file_where("", label))
        values = {}
        for key, value in table.items():
            try:
                values[key] = child.value.parse(value)
            except ValueError:
                where = self._file_where(label, show(key))
                raise ConfigError(f"{where} = {show(value)}: expected {child.value.expected}") from None
        if child.check is not None:
            child.check(values, Scope(self.path, label, self.data_dir, loaded))
        return values

    def _check_env(self, schema: type) -> None:
        """A mistyped ARK_* variable would silently do nothing: refuse it instead."""
        for var in self.env:
            if not var.startswith("ARK_") or var in self.env_known:
                continue
            forms = [form for form, _ in env_forms(schema)]
            expected = ", ".join(forms[:-1]) + f" or {forms[-1]}" if len(forms) > 1 else forms[0]
            in_use = [
                f"; {noun}s in use: {', '.join(names) or 'none'}"
                for prefix, (noun, names) in self.in_use.items()
                if var.startswith(prefix + "_")
            ]
            raise ConfigError(
                f"environment variable {var}: not an ARK setting "
                f"(expected {expected} of a setting in docs/configuration.md{''.join(in_use)})"
            )


def _entry_label(child: Child, path: tuple[str, ...], name: str) -> str:
    quote = '"' if child.quoted else ""
    return f"[{'.'.join(path)}.{quote}{name}{quote}]"
