"""Write a benchmark's generated section into a markdown file: shared by every benchmarks/*/run.py."""

from __future__ import annotations

from pathlib import Path


def write_docs(path: Path, section: str, begin: str, end: str) -> None:
    """Replace the text between ``begin`` and ``end`` (the section carries both), or append the section."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
