"""The command line: init, config check, status, models list/pull, version, and `ark up` on a first start."""

from __future__ import annotations

import ast
import hashlib
import os
import re
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from ark.cli.main import main
from tests.conftest import LoopThread, free_port, wait_until
from tests.fakes.fileserver import FileServer
from tests.gguf_factory import make_tiny_gguf


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    for var in [v for v in os.environ if v.startswith("ARK_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    # Ollama is not installed here: point the default engine at a closed port so probes fail fast.
    monkeypatch.setenv("ARK_ENGINES_OLLAMA_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("ARK_ENGINES_EMBEDDED_BUNDLED_MODEL", "false")
    return CliRunner()


def test_help_explains_each_command(runner: CliRunner) -> None:
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("init", "up", "status", "config", "models", "version"):
        assert command in result.output
    assert "pull" in runner.invoke(main, ["models", "--help"]).output


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(main, ["version"])
    assert result.exit_code == 0 and result.output.startswith("ark 0.")


def test_init_writes_a_private_config_with_a_fresh_key(runner: CliRunner, tmp_path: Path) -> None:
    data = tmp_path / "d"
    result = runner.invoke(main, ["init", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    path = data / "ark.toml"
    assert str(path) in result.output
    key = tomllib.loads(path.read_text())["master_key"]
    assert key.startswith("sk-ark-") and len(key) >= 39 and key in result.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = runner.invoke(main, ["init", "--data-dir", str(data)])
    assert again.exit_code != 0 and "already exists" in again.output
    assert tomllib.loads(path.read_text())["master_key"] == key  # not overwritten
    forced = runner.invoke(main, ["init", "--data-dir", str(data), "--force"])
    assert forced.exit_code == 0 and tomllib.loads(path.read_text())["master_key"] != key


def test_init_defaults_to_the_xdg_data_dir(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["init"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "xdg" / "ark" / "ark.toml").exists()


def test_config_check_ok_and_bad(runner: CliRunner, tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('master_key = "sk-ark-0123456789abcdefghij"\n')
    result = runner.invoke(main, ["config", "check", "--config", str(good)])
    assert result.exit_code == 0 and "OK" in result.output and str(good) in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\nlisten = "nowhere"\n')
    result = runner.invoke(main, ["config", "check", "--config", str(bad)])
    assert result.exit_code == 2
    assert str(bad) in result.output and "listen" in result.output and '"nowhere"' in result.output


def test_models_list_and_status_show_the_embedded_models(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `ark status` looks for a gateway: not at the default 4000, where this machine may run a real ARK
    monkeypatch.setenv("ARK_GATEWAY_LISTEN", f"127.0.0.1:{free_port()}")
    data = tmp_path / "d"
    make_tiny_gguf((data / "models").mkdir(parents=True) or data / "models" / "tiny.gguf")
    listed = runner.invoke(main, ["models", "list", "--data-dir", str(data)])
    assert listed.exit_code == 0, listed.output
    assert "tiny" in listed.output and "embedded" in listed.output
    status = runner.invoke(main, ["status", "--data-dir", str(data), "--json"])
    assert status.exit_code == 0, status.output
    import json

    report = json.loads(status.output)
    assert report["gateway"]["running"] is False
    engines = {e["name"]: e for e in report["engines"]}
    assert engines["embedded"]["up"] is True and engines["ollama"]["up"] is False
    assert [m["id"] for m in report["models"]] == ["tiny"]
    table = runner.invoke(main, ["status", "--data-dir", str(data)])
    assert "not running" in table.output and "tiny" in table.output


@pytest.fixture
def file_server() -> Iterator[tuple[FileServer, LoopThread]]:
    loop = LoopThread()
    server = FileServer()
    loop.run(server.__aenter__())
    yield server, loop
    loop.run(server.__aexit__(None, None, None))
    loop.close()


def test_models_pull_downloads_into_the_models_dir(
    runner: CliRunner, tmp_path: Path, file_server: tuple[FileServer, LoopThread]
) -> None:
    server, _ = file_server
    body = make_tiny_gguf(tmp_path / "src.gguf").read_bytes()
    url = server.add("small-model.gguf", body)
    data = tmp_path / "d"
    digest = hashlib.sha256(body).hexdigest()
    result = runner.invoke(main, ["models", "pull", url, "--sha256", digest, "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert (data / "models" / "small-model.gguf").read_bytes() == body
    assert "small-model" in result.output
    wrong = runner.invoke(
        main, ["models", "pull", url, "--sha256", "0" * 64, "--name", "other.gguf", "--data-dir", str(data)]
    )
    assert wrong.exit_code == 1 and "sha256" in wrong.output.lower()
    assert not (data / "models" / "other.gguf").exists()
    listed = runner.invoke(main, ["models", "list", "--data-dir", str(data)])
    assert "small-model" in listed.output


def test_up_without_any_config_starts_and_prints_the_key_once(tmp_path: Path) -> None:
    data = tmp_path / ("a-data-directory-with-a-name-longer-than-the-terminal-is-wide" * 2)
    port = free_port()
    ollama = f"http://127.0.0.1:{free_port()}"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "ARK_DATA_DIR": str(data),
        "ARK_GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "ARK_CONSOLE_LISTEN": f"127.0.0.1:{free_port()}",
        "ARK_MONITOR_EMBEDDED": "no",
        "ARK_ENGINES_OLLAMA_URL": ollama,
        "ARK_ENGINES_EMBEDDED_BUNDLED_MODEL": "false",
        "COLUMNS": "40",  # what ARK prints is never wrapped to the terminal's width
    }

    def start() -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ark", "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert wait_until(lambda: _ready(port) or proc.poll() is not None, timeout=20)
        assert proc.poll() is None
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
        return proc, out

    proc, first = start()
    assert proc.returncode == 0, first
    key = tomllib.loads((data / "ark.toml").read_text())["master_key"]
    lines = first.splitlines()
    assert any(line.endswith(f": {key}") for line in lines) and f"First start: wrote {data / 'ark.toml'}" in lines
    assert (data / "models").is_dir() and (data / "logs").is_dir()
    # What matters, in ARK's words: no third-party INFO lines (alembic's, on the first start), one line per engine.
    logged = [match.groups() for line in lines if (match := LOG_LINE.match(line))]
    assert not [line for line in lines if "alembic" in line], first
    assert not [(level, name) for level, name, _ in logged if level == "INFO" and not name.startswith("ark")], first
    engines = [message for _, _, message in logged if message.startswith("engine ")]
    assert len(engines) == 2, first
    ollama_line, embedded_line = engines
    assert ollama_line.startswith(f"engine ollama ({ollama}): not answering (") and ollama_line.endswith(
        "); its models are not served"
    )
    assert embedded_line == f"engine embedded: no models in {data / 'models'}"
    assert any(line.endswith(f"data: {data}") for line in lines), first  # the banner: the path whole on its line
    proc, second = start()
    assert key not in second and key[:11] in second  # later starts show only the prefix


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+): (.*)$")


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_up_refuses_a_bad_config_before_starting(tmp_path: Path) -> None:
    bad = tmp_path / "ark.toml"
    bad.write_text('master_key = "sk-ark-0123456789abcdefghij"\n[gateway]\nmax_inflight = -1\n')
    result = subprocess.run(
        [sys.executable, "-m", "ark", "up", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
    )
    assert result.returncode == 2
    assert str(bad) in result.stderr and "max_inflight = -1" in result.stderr
    assert not (tmp_path / ".local").exists()  # nothing was created


def test_status_sees_a_running_gateway_and_up_refuses_a_taken_port(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import start_ark, stop_ark

    monkeypatch.delenv("ARK_ENGINES_OLLAMA_URL")  # this config has no ollama engine
    monkeypatch.delenv("ARK_ENGINES_EMBEDDED_BUNDLED_MODEL")

    config = 'master_key = "sk-ark-0123456789abcdefghij"\n[gateway]\nlisten = "127.0.0.1:{PORT}"\n'
    config += '[engines.embedded]\nkind = "embedded"\nbundled_model = false\n'
    ark = start_ark(config, tmp_path)
    try:
        status = runner.invoke(main, ["status", "--config", str(ark.config), "--json"])
        import json

        assert json.loads(status.output)["gateway"] == {
            "url": ark.url + "/health/ready",
            "running": True,
            "ready": True,
        }
        taken = subprocess.run(
            [sys.executable, "-m", "ark", "up", "--config", str(ark.config)],
            capture_output=True,
            text=True,
            timeout=30,
            env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        )
        assert taken.returncode == 1 and "cannot listen on 127.0.0.1:" in taken.stderr
    finally:
        stop_ark(ark)


def test_every_command_is_registered_in_ark_cli_main_and_nothing_imports_it_back() -> None:
    """One list of commands (ark.cli.main.COMMANDS), no registration on import, no import cycle."""
    from ark.cli import main as registry

    assert sorted(main.commands) == sorted(c.name for c in registry.COMMANDS if c.name)
    package = Path(registry.__file__).parent
    registering = ("main.command", "main.group", "main.add_command")
    offenders = []
    for path in sorted(package.glob("*.py")):
        if path.name == "main.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                imported = [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            else:
                imported = []
            if any(name == "ark.cli.main" or name.startswith("ark.cli.main.") for name in imported):
                offenders.append(f"{path.name}:{node.lineno} imports the registry")
            if isinstance(node, ast.Attribute) and ast.unparse(node) in registering:
                offenders.append(f"{path.name}:{node.lineno} registers on the root group itself")
    assert not offenders, offenders


def test_arks_errors_end_at_the_root_group_as_exit_codes(runner: CliRunner, tmp_path: Path) -> None:
    """Commands let ARK's errors through; ark.cli.main prints the message: exit 1, a ConfigError exit 2."""
    pulled = runner.invoke(main, ["models", "pull", "ftp://example.org/m.gguf", "--data-dir", str(tmp_path)])
    assert pulled.exit_code == 1 and isinstance(pulled.exception, SystemExit), pulled.output
    assert "Error: only http:// and https:// URLs can be pulled" in pulled.output
    rendered = runner.invoke(main, ["render", "--data-dir", str(tmp_path)])  # no [edge] domain
    assert rendered.exit_code == 2 and isinstance(rendered.exception, SystemExit), rendered.output
    assert "Error: bad configuration: [edge] domain is empty" in rendered.output
