"""The commented ark.toml that ``ark init`` writes, generated from the schema.

Every setting appears with its help text and its default (commented out), so
the file is its own reference; the reference box closes the file as an example.
"""

from __future__ import annotations

import secrets
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ark.config import schema
from ark.config.schema import Setting

REFERENCE_BOX = """\
# --- Example: the reference box (RTX 5090, 32 GB) served by Ollama ---------------------------
# Uncomment and adapt. Declaring any [engines.*] replaces the defaults (ollama + embedded).
#
# [engines.ollama]
# kind = "ollama"
# url = "http://127.0.0.1:11434"
# keep_alive = "10m"
#
# [models."qwen3.5:35b"]          # the thinker
# engine = "ollama"
# memory_gb = 23
# priority = "high"
#
# [models."devstral-small-2"]     # the coder
# engine = "ollama"
# memory_gb = 15
# priority = "medium"
#
# [models."dolphin-mistral-24b"]
# engine = "ollama"
# memory_gb = 13
# priority = "low"
#
# [models."nomic-embed-text"]     # always loaded, for RAG
# engine = "ollama"
# memory_gb = 0.3
# pinned = true
#
# [aliases]
# "gpt-4" = "qwen3.5:35b"
"""


def generate_master_key() -> str:
    """``sk-ark-`` and 43 url-safe characters (256 random bits)."""
    return "sk-ark-" + secrets.token_urlsafe(32)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> list[str]:
    return ["# " + line for line in textwrap.wrap(text, 96)]


def _settings(settings: Iterable[Setting], values: dict[str, Any] | None = None) -> list[str]:
    lines: list[str] = []
    for s in settings:
        lines += _comment(s.help)
        if values and s.key in values:
            lines.append(f"{s.key} = {_toml_value(values[s.key])}")
        else:
            default = "" if s.default is None else s.default
            lines.append(f"# {s.key} = {_toml_value(default)}")
        lines.append("")
    return lines


def render_config(master_key: str, data_dir: Path | None = None) -> str:
    """The text of a fresh ark.toml holding ``master_key`` (and ``data_dir`` when given)."""
    top: dict[str, Any] = {"master_key": master_key}
    if data_dir is not None:
        top["data_dir"] = str(data_dir)
    lines = [
        "# ARK configuration. Precedence: environment > this file > defaults.",
        "# Every setting can be overridden by ARK_<SECTION>_<KEY>, e.g. ARK_GATEWAY_LISTEN=0.0.0.0:4000;",
        "# top-level ones by ARK_<KEY> (ARK_DATA_DIR, ARK_MASTER_KEY). Check with: ark config check",
        "",
        *_settings(schema.TOP, top),
        "[gateway]",
        *_settings(schema.GATEWAY),
        "[store]",
        *_settings(schema.STORE),
        "[gpu]",
        *_settings(schema.GPU),
        *(line for name, settings in schema.PLAIN for line in (f"[{name}]", *_settings(settings))),
        "# --- Engines ----------------------------------------------------------------------------",
        "# With no [engines.*] table ARK uses Ollama on 127.0.0.1:11434 when it answers, and the",
        "# embedded llama.cpp engine on DATA/models/*.gguf. An engine table takes these keys:",
        "#",
    ]
    for s in schema.ENGINE:
        kinds = "" if s.kinds == schema.ENGINE_KINDS else f"  ({', '.join(s.kinds)} only)"
        default = "required" if s.required else f"default {_toml_value('' if s.default is None else s.default)}"
        lines.append(f"#   {s.key:<20} {default}{kinds}")
        lines += ["#       " + line for line in textwrap.wrap(s.help, 88)]
    lines += ["#", '# A [models."ID"] table takes:']
    for s in schema.MODEL:
        lines.append(f"#   {s.key:<20} {s.help}")
    lines += ["", REFERENCE_BOX]
    return "\n".join(lines)
