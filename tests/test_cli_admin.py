"""`ark keys`, `ark teams` and `ark usage` against a running gateway."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from ark.cli.main import main
from tests.conftest import MASTER_KEY, ArkProcess, embedded_ark, free_port, stop_ark, wait_until


@pytest.fixture(scope="module")
def ark(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[ArkProcess]:
    process = embedded_ark(tmp_path_factory.mktemp("cli-admin"), tiny_gguf)
    yield process
    stop_ark(process)


@pytest.fixture
def ark_cli(ark: ArkProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    for var in [v for v in os.environ if v.startswith("ARK_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("ARK_CONFIG", str(ark.config))
    yield CliRunner()


def run(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_keys_lifecycle(ark: ArkProcess, ark_cli: CliRunner) -> None:
    team = run(ark_cli, "teams", "create", "--alias", "lab", "--id", "team-lab", "--max-budget", "5")
    assert "team-lab" in team
    created = json.loads(
        run(
            ark_cli,
            "keys",
            "create",
            "--alias",
            "bob",
            "--user",
            "bob@example.com",
            "--team",
            "team-lab",
            "--models",
            "tiny",
            "--rpm",
            "30",
            "--duration",
            "7d",
            "--metadata",
            '{"desk": 4}',
            "--json",
        )
    )
    key = created["key"]
    assert key.startswith("sk-ark-") and created["rpm_limit"] == 30 and created["metadata"] == {"desk": 4}
    listing = run(ark_cli, "keys", "list")
    assert "bob" in listing and key[:11] in listing and key not in listing
    info = json.loads(run(ark_cli, "keys", "info", key))
    assert info["team_id"] == "team-lab" and info["models"] == ["tiny"]
    assert "blocked" in run(ark_cli, "keys", "update", key, "--block")
    assert httpx.get(ark.api + "/models", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    run(ark_cli, "keys", "update", created["token"], "--unblock", "--max-budget", "2.5")
    reply = httpx.post(
        ark.api + "/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
        json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    )
    assert reply.status_code == 200
    teams = json.loads(run(ark_cli, "teams", "list", "--json"))
    assert [t["team_id"] for t in teams] == ["team-lab"]
    assert json.loads(run(ark_cli, "teams", "info", "team-lab"))["keys"][0]["key_alias"] == "bob"

    def used() -> int:
        return int(json.loads(run(ark_cli, "keys", "info", key))["tokens_used"])

    assert wait_until(lambda: used() > 2, timeout=5)  # the ledger adds what the request used
    rows = json.loads(run(ark_cli, "usage", "--json"))
    assert any(r["key"] == "bob" and r["model"] == "tiny" and r["completion_tokens"] == 2 for r in rows)
    assert "bob" in run(ark_cli, "usage", "--by", "key")
    assert "revoked 1 key(s)" in run(ark_cli, "keys", "revoke", key)
    gone = ark_cli.invoke(main, ["keys", "info", key])
    assert gone.exit_code == 1 and "No such key" in gone.output


def test_bad_input_and_no_gateway(ark_cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = ark_cli.invoke(main, ["keys", "create", "--budget-duration", "forever"])
    assert bad.exit_code == 1 and "budget_duration" in bad.output and "HTTP 400" in bad.output
    config = tmp_path / "ark.toml"
    config.write_text(f'master_key = "{MASTER_KEY}"\n[gateway]\nlisten = "127.0.0.1:{free_port()}"\n')  # closed
    monkeypatch.setenv("ARK_CONFIG", str(config))
    down = ark_cli.invoke(main, ["keys", "list"])
    assert down.exit_code == 1 and "not running" in down.output and "ark up" in down.output


@pytest.mark.parametrize(
    "args",
    [
        ["keys", "create", "--duration", "99999999999999d"],
        ["keys", "create", "--budget-duration", "99999999999999d"],
        ["keys", "create", "--budget-duration", "36501d"],
        ["teams", "create", "--budget-duration", "99999999999999d"],
    ],
)
def test_a_duration_past_100_years_is_a_clear_error(ark_cli: CliRunner, args: list[str]) -> None:
    result = ark_cli.invoke(main, args)
    assert result.exit_code == 1 and result.exception is not None and isinstance(result.exception, SystemExit)
    assert "longer than 100 years" in result.output and "HTTP 400" in result.output  # not a 500, no traceback
    assert "Traceback" not in result.output
