"""Docs that must not drift: generated references, the README's two commands, every setting documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from ark.config import schema
from ark.config.declare import every_setting

ROOT = Path(__file__).resolve().parent.parent


def test_generated_references_are_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_every_setting_is_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    for _, setting in every_setting(schema.Settings):
        assert f"| `{setting.key}` |" in text, setting.key


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def test_readme_has_exactly_two_quick_start_commands_and_ci_runs_the_test_one() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    assert "ark up" in commands[0]
    assert "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci, "CI must run the README's test command as written"


def test_every_error_code_is_in_the_api_reference() -> None:
    from ark import errors

    text = (ROOT / "docs" / "api.md").read_text()
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, errors.ApiError) and cls.code:
            assert f"`{cls.code}`" in text, cls.code
