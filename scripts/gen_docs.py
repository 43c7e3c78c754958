"""Regenerate the docs that are derived from code: docs/configuration.md and docs/cli.md.

.venv/bin/python scripts/gen_docs.py          write them
.venv/bin/python scripts/gen_docs.py --check  exit 1 when they are stale (tests/test_docs.py does this)
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ark.cli.common import Context
from ark.cli.main import main as cli
from ark.config.reference import configuration_markdown

ROOT = Path(__file__).resolve().parent.parent


def _commands(group: click.Group, prefix: list[str]) -> list[tuple[list[str], click.Command]]:
    out: list[tuple[list[str], click.Command]] = []
    for name in sorted(group.commands):
        command = group.commands[name]
        out.append(([*prefix, name], command))
        if isinstance(command, click.Group):
            out += _commands(command, [*prefix, name])
    return out


def cli_markdown() -> str:
    lines = ["# CLI reference", "", "<!-- Generated from `ark --help` by scripts/gen_docs.py. -->", ""]
    root = Context(cli, info_name="ark")  # ARK's help formatter: 100 columns, `quoted` spans whole
    lines += ["```", cli.get_help(root).rstrip(), "```", ""]
    for path, command in _commands(cli, []):
        ctx = Context(command, info_name="ark " + " ".join(path))
        lines += [f"## `ark {' '.join(path)}`", "", "```", command.get_help(ctx).rstrip(), "```", ""]
    return "\n".join(lines)


def generated() -> dict[Path, str]:
    return {ROOT / "docs" / "configuration.md": configuration_markdown(), ROOT / "docs" / "cli.md": cli_markdown()}


def main() -> int:
    stale = [path for path, text in generated().items() if not path.exists() or path.read_text() != text]
    if "--check" in sys.argv:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is stale: run scripts/gen_docs.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in generated().items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
