"""What ARK prints is never wrapped or cut to the terminal's width: a path, a key or a command a person copies
is whole on one line, with COLUMNS=40 or 300, on a terminal or not (these run without one)."""

from __future__ import annotations

import ast
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MASTER_KEY, LoopThread, free_port
from tests.fakes.fileserver import FileServer
from tests.gguf_factory import make_tiny_gguf

LONG = "a-folder-whose-name-is-longer-than-a-narrow-terminal-is-wide"
MODEL = "a-model-whose-name-is-longer-than-a-narrow-terminal-is-wide-q4_k_m"
SRC = Path(__file__).parents[1] / "src" / "ark"


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    loop = LoopThread()
    server = FileServer()
    loop.run(server.__aenter__())
    yield server
    loop.run(server.__aexit__(None, None, None))
    loop.close()


def ark(tmp_path: Path, columns: str, *args: str | Path) -> list[str]:
    """`python -m ark ARGS` with the terminal COLUMNS wide (and none attached): its output's lines."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "COLUMNS": columns,
        "ARK_GATEWAY_LISTEN": f"127.0.0.1:{free_port()}",  # `ark status` finds no gateway, whatever runs here
    }
    done = subprocess.run(
        [sys.executable, "-m", "ark", *map(str, args)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return (done.stdout + done.stderr).splitlines()


def has_line(lines: list[str], start: str, whole: str | Path) -> None:
    """A line that starts with ``start`` and holds ``whole`` unbroken."""
    assert any(line.lstrip().startswith(start) and str(whole) in line for line in lines), "\n".join(lines)


@pytest.mark.parametrize("columns", ["40", "300"])
def test_paths_keys_and_commands_are_printed_whole(tmp_path: Path, columns: str, file_server: FileServer) -> None:
    root = tmp_path / LONG / LONG
    data = root / "data"
    initialised = ark(tmp_path, columns, "init", "--data-dir", data)
    has_line(initialised, "Wrote", data / "ark.toml")
    has_line(initialised, "Start ARK with:", f"ark up --data-dir {data}")
    key = next(line.rsplit(" ", 1)[1] for line in initialised if line.startswith("Master key"))
    assert key.startswith("sk-ark-") and len(key) > 40
    has_line(ark(tmp_path, columns, "config", "check", "--data-dir", data), "data dir", data)

    config = root / "ark.toml"
    config.write_text(
        f'master_key = "{MASTER_KEY}"\n[edge]\ndomain = "ark.test"\n'
        '[wireguard]\ninterface = "wg0"\nsubnet = "10.8.77.0/24"\nendpoint = "192.0.2.1:51820"\n'
        '[engines.embedded]\nkind = "embedded"\nbundled_model = false\n'
    )
    where = ("--config", config, "--data-dir", data)
    bundle = root / "bundle"
    rendered = ark(tmp_path, columns, "render", *where, "--out", bundle)
    has_line(rendered, "OK", f"{bundle}: ")
    peer = ark(tmp_path, columns, "peers", "add", "phone", "--no-qr", *where, "--out", bundle)
    has_line(peer, "Peer file (secret, 0600):", bundle / "wireguard" / "peers" / "phone.conf")
    has_line(peer, "Apply on the server:", f"wg syncconf wg0 <(wg-quick strip {bundle / 'wireguard' / 'wg0.conf'})")
    public_key = next(line.rsplit(" ", 1)[1] for line in peer if "public key" in line)
    has_line(ark(tmp_path, columns, "peers", "list", *where), "│", public_key)  # a table cell: whole too

    body = make_tiny_gguf(tmp_path / "src.gguf").read_bytes()
    url = file_server.add(f"{MODEL}.gguf", body)
    pulled = ark(tmp_path, columns, "models", "pull", url, "--sha256", hashlib.sha256(body).hexdigest(), *where)
    has_line(pulled, "OK", data / "models" / f"{MODEL}.gguf")
    has_line(ark(tmp_path, columns, "models", "list", *where), "│", MODEL)
    has_line(ark(tmp_path, columns, "status", *where), "data", data)
    helped = ark(tmp_path, columns, "render", "--help")  # help text too: a quoted command is never broken
    has_line(helped, "", "`nginx -t -c OUT/nginx/nginx.conf`")
    has_line(ark(tmp_path, columns, "firewall", "apply", "--help"), "", "`ark firewall confirm`")


def test_commands_print_through_the_one_console_and_table() -> None:
    """ark.cli.common's console never wraps and its Table never cuts a cell; a rich Console or Table built
    anywhere else would fit its output to the terminal again."""
    offenders = []
    for path in SRC.rglob("*.py"):
        if path == SRC / "cli" / "common.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        rich_names = {
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module in ("rich.console", "rich.table")
            for alias in node.names
            if alias.name in ("Console", "Table")
        }
        offenders += [
            f"{path.relative_to(SRC)}:{node.lineno}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Name) and node.func.id in rich_names)
                or (isinstance(node.func, ast.Attribute) and ast.unparse(node.func) in RICH_CALLS)
            )
        ]
    assert not offenders, offenders


RICH_CALLS = {"rich.console.Console", "rich.table.Table"}
