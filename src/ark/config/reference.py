"""docs/configuration.md, generated from the schema so that it cannot drift from the code."""

from __future__ import annotations

from collections.abc import Iterable

from ark.config import schema
from ark.config.loader import env_name
from ark.config.schema import Setting


def _default(setting: Setting) -> str:
    if setting.required:
        return "required"
    if setting.default is None or setting.default == "":
        return "—"
    if isinstance(setting.default, bool):
        return f"`{str(setting.default).lower()}`"
    return f"`{setting.default}`"


def _table(settings: Iterable[Setting], env_prefix: tuple[str, ...] | None, kinds: bool = False) -> list[str]:
    head = "| key | type | default | " + ("engines | " if kinds else "") + "environment | meaning |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in settings:
        env = f"`{env_name(*env_prefix, s.key)}`" if env_prefix is not None else "—"
        kind = (" | " + ("all" if s.kinds == schema.ENGINE_KINDS else ", ".join(s.kinds))) if kinds else ""
        lines.append(f"| `{s.key}` | {s.type.expected} | {_default(s)}{kind} | {env} | {s.help} |")
    return lines


_INTROS = {
    "console": "ARK's web console: the landing page, admin pages and the login that Nginx asks (docs/security.md).",
    "auth": "Users, sessions and the identity Nginx passes on (docs/security.md).",
    "edge": "What `ark render` writes for Nginx: one TLS site per subdomain of `domain` (docs/security.md).",
    "wireguard": "The VPN the experiment receiver and remote engines are reached through (docs/security.md).",
    "firewall": "The default-DROP ruleset `ark render` writes and `ark firewall apply` loads (docs/security.md).",
    "monitor": "Prometheus, Alertmanager, the exporters and the alert thresholds (docs/monitoring.md).",
}


def _section(name: str, settings: tuple[Setting, ...]) -> list[str]:
    return [f"## `[{name}]`", "", _INTROS[name], "", *_table(settings, (name,)), ""]


def configuration_markdown() -> str:
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from src/ark/config/schema.py by scripts/gen_docs.py; tests/test_docs.py checks it. -->",
        "",
        "ARK reads one file, `ark.toml`: `--config FILE`, else `$ARK_CONFIG`, else `DATA/ark.toml`",
        "(DATA: `--data-dir`, `$ARK_DATA_DIR`, `data_dir` in the file, else `$XDG_DATA_HOME/ark`,",
        "that is `~/.local/share/ark`). Precedence for every setting: **environment > file > default**.",
        "`ark init` writes a commented file with a new master key; `ark up` does it on a first start",
        "without any file. `ark config check` validates file and environment without starting anything;",
        "a bad value stops `ark up` with the file, key, value and what was expected.",
        "An `ARK_*` variable that names no setting is an error too (a typo would otherwise do nothing).",
        "",
        "## Top level",
        "",
        *_table(schema.TOP, ()),
        "",
        "## `[gateway]`",
        "",
        *_table(schema.GATEWAY, ("gateway",)),
        "",
        "## `[store]`",
        "",
        *_table(schema.STORE, ("store",)),
        "",
        "## `[gpu]`",
        "",
        "The GPU arbiter (docs/arbiter.md): which device it manages and the rules it plans by.",
        "",
        *_table(schema.GPU, ("gpu",)),
        "",
        *(line for name, settings in schema.PLAIN for line in _section(name, settings)),
        "## `[engines.NAME]`",
        "",
        "One table per engine; NAME is yours (`ollama`, `cloud`, ...). With no `[engines.*]` table ARK uses",
        "`ollama` (`http://127.0.0.1:11434`, used when it answers) and `embedded` (llama.cpp on",
        "`DATA/models/*.gguf`). Declaring any engine replaces both. Environment: `ARK_ENGINES_<NAME>_<KEY>`,",
        "NAME upper-cased with other characters as `_` (e.g. `ARK_ENGINES_OLLAMA_URL`).",
        "",
        *_table(schema.ENGINE, ("engines", "<NAME>"), kinds=True),
        "",
        '## `[models."ID"]`',
        "",
        "Facts and policy per model (file only). A model any engine lists is served without a table;",
        "a table with `engine` routes the model to that engine even while the engine is down.",
        "",
        *_table(schema.MODEL, None),
        "",
        "## `[aliases]`",
        "",
        '`"alias" = "model id"` (file only). Clients may use the alias anywhere a model id goes; answers name',
        "the alias they asked for. An alias may not point at another alias.",
        "",
        "```toml",
        "[aliases]",
        '"gpt-4" = "qwen3.5:35b"',
        "```",
        "",
    ]
    return "\n".join(lines)
