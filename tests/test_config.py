"""Configuration: precedence, every class of bad config, and the file `ark init` writes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from ark.config import Address, Settings, env_name, generate_master_key, load_settings, network, render_config
from ark.config.declare import every_setting, section, setting, table, tables
from ark.config.reference import configuration_markdown
from ark.config.types import Choice, HostPort, Int, Str, Type
from ark.errors import ConfigError

KEY = "sk-ark-" + "k" * 40


def load(tmp_path: Path, text: str | None, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    path = tmp_path / "ark.toml"
    if text is not None:
        path.write_text(text)
    return load_settings(
        config_path=path if text is not None else None,
        data_dir=None,
        env={"XDG_DATA_HOME": str(tmp_path / "xdg"), **(env or {})},
    )


def test_defaults_without_any_file(tmp_path: Path) -> None:
    settings = load(tmp_path, None)
    assert settings.config_path is None
    assert settings.data_dir == tmp_path / "xdg" / "ark"
    assert settings.gateway.listen == Address("127.0.0.1", 4000)
    assert [(e.name, e.kind) for e in settings.engines] == [("ollama", "ollama"), ("embedded", "embedded")]
    assert settings.engines[0].url == "http://127.0.0.1:11434"
    assert settings.engines[1].models_dir == settings.data_dir / "models"
    assert not settings.master_key


def test_precedence_env_over_file_over_default(tmp_path: Path) -> None:
    text = f'master_key = "{KEY}"\n[gateway]\nlisten = "127.0.0.1:5000"\nmax_inflight = 7\n'
    settings = load(tmp_path, text, {"ARK_GATEWAY_LISTEN": "0.0.0.0:4001"})
    assert settings.gateway.listen == Address("0.0.0.0", 4001)  # env wins
    assert settings.gateway.max_inflight == 7  # file wins over default
    assert settings.gateway.max_body_bytes == 8 * 1024 * 1024  # default


def test_every_declared_setting_has_an_env_override(tmp_path: Path) -> None:
    env = {
        "ARK_MASTER_KEY": "sk-env-key-0123456789abcdef",
        "ARK_DATA_DIR": str(tmp_path / "envdata"),
        "ARK_LOG_LEVEL": "debug",
        "ARK_GATEWAY_LISTEN": "127.0.0.1:4321",
        "ARK_GATEWAY_MAX_BODY_BYTES": "1MiB",
        "ARK_GATEWAY_MAX_INFLIGHT": "3",
        "ARK_GATEWAY_LOG_PROMPTS": "true",
        "ARK_GATEWAY_ACCESS_LOG": "off",
        "ARK_GATEWAY_MODEL_REFRESH_S": "5",
        "ARK_ENGINES_OLLAMA_URL": "http://10.0.0.2:11434",
        "ARK_ENGINES_OLLAMA_KEEP_ALIVE": "-1",
        "ARK_ENGINES_EMBEDDED_N_THREADS": "1",
        "ARK_ENGINES_EMBEDDED_FIRST_TOKEN_TIMEOUT": "2.5",
    }
    s = load(tmp_path, None, env)
    assert s.master_key.value == env["ARK_MASTER_KEY"]
    assert s.data_dir == tmp_path / "envdata"
    assert (s.log_level, s.gateway.listen.port, s.gateway.max_body_bytes) == ("debug", 4321, 1024 * 1024)
    assert (s.gateway.max_inflight, s.gateway.log_prompts, s.gateway.access_log) == (3, True, "off")
    assert s.gateway.model_refresh_s == 5.0
    ollama, embedded = s.engines
    assert (ollama.url, ollama.keep_alive) == ("http://10.0.0.2:11434", "-1")
    assert (embedded.n_threads, embedded.first_token_timeout) == (1, 2.5)
    assert embedded.models_dir == tmp_path / "envdata" / "models"


def test_env_names_cover_the_schema() -> None:
    names = {env_name(*path, s.key) for path, s in every_setting(Settings)}
    assert {"ARK_DATA_DIR", "ARK_MASTER_KEY", "ARK_GATEWAY_LISTEN", "ARK_MONITOR_RETENTION"} <= names
    assert env_name("engines", "my-cloud", "api_key") == "ARK_ENGINES_MY_CLOUD_API_KEY"


def test_ark_config_env_selects_the_file(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.toml"
    path.write_text('[gateway]\nlisten = "127.0.0.1:4444"\n')
    settings = load_settings(env={"ARK_CONFIG": str(path), "XDG_DATA_HOME": str(tmp_path)})
    assert settings.config_path == path and settings.gateway.listen.port == 4444


def test_data_dir_file_is_found_without_config_flag(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "ark.toml").write_text(f'master_key = "{KEY}"\n')
    settings = load_settings(env={"ARK_DATA_DIR": str(data)})
    assert settings.config_path == data / "ark.toml" and settings.master_key.value == KEY


def test_declared_engines_replace_the_defaults(tmp_path: Path) -> None:
    text = '[engines.cloud]\nkind = "openai"\nurl = "https://api.example.com/v1"\napi_key = "sk-up"\n'
    settings = load(tmp_path, text)
    assert [e.name for e in settings.engines] == ["cloud"]
    assert settings.engines[0].api_key.value == "sk-up"
    assert "sk-up" not in repr(settings)  # secrets never print


def test_max_keep_alive_s_defaults_to_an_hour_and_is_set_per_engine(tmp_path: Path) -> None:
    text = '[engines.a]\nkind = "ollama"\nurl = "http://h:1"\n[engines.b]\nkind = "ollama"\nurl = "http://h:2"\n'
    a, b = load(tmp_path, text, {"ARK_ENGINES_B_MAX_KEEP_ALIVE_S": "600"}).engines
    assert (a.max_keep_alive_s, b.max_keep_alive_s) == (3600, 600)


BAD_CONFIGS = [
    # (name, file text, env, words the message must contain)
    ("unknown top key", 'mastr_key = "x"', {}, ["unknown key", "mastr_key", 'did you mean "master_key"']),
    ("unknown section key", '[gateway]\nlisen = "1.2.3.4:1"', {}, ["[gateway]", "lisen", '"listen"']),
    ("unknown section", "[gatway]\n", {}, ["unknown key", "gatway"]),
    ("wrong type int", '[gateway]\nmax_inflight = "lots"', {}, ["[gateway] max_inflight", '"lots"', "an integer"]),
    ("wrong type bool", '[gateway]\nlog_prompts = "maybe"', {}, ["log_prompts", '"maybe"', "true or false"]),
    ("int out of range", "[gateway]\nmax_inflight = 0", {}, ["max_inflight = 0", "between 1 and 100000"]),
    ("bad port", '[gateway]\nlisten = "127.0.0.1:99999"', {}, ["listen", "99999", "port between 1 and 65535"]),
    ("port not a number", '[gateway]\nlisten = "127.0.0.1:http"', {}, ["listen", "host:port"]),
    ("no port", '[gateway]\nlisten = "localhost"', {}, ["listen", "host:port"]),
    ("bad size", '[gateway]\nmax_body_bytes = "huge"', {}, ["max_body_bytes", "a size in bytes"]),
    ("section not a table", 'gateway = "x"', {}, ["[gateway]", "expected a table"]),
    ("bad choice", 'log_level = "loud"', {}, ["log_level", '"loud"', '"debug"']),
    ("short master key", 'master_key = "abc"', {}, ["master_key = <hidden>", "at least 16"]),
    ("engine without kind", '[engines.x]\nurl = "http://h:1"', {}, ["[engines.x] kind", "missing"]),
    ("engine bad kind", '[engines.x]\nkind = "vllm"', {}, ["[engines.x] kind", '"vllm"', '"ollama"']),
    ("engine bad url", '[engines.x]\nkind = "ollama"\nurl = "ftp://h"', {}, ["url", "http(s) URL"]),
    ("engine without url", '[engines.x]\nkind = "openai"', {}, ["[engines.x] url", "needs its URL"]),
    (
        "engine foreign key",
        '[engines.x]\nkind = "openai"\nurl = "http://h:1"\nn_threads = 2',
        {},
        ["n_threads", "not a setting of a openai engine"],
    ),
    ("timeout not positive", '[engines.x]\nkind = "embedded"\ntotal_timeout = 0', {}, ["total_timeout", "> 0"]),
    (
        "keep-alive bound out of range",
        '[engines.x]\nkind = "ollama"\nurl = "http://h:1"\nmax_keep_alive_s = 0',
        {},
        ["max_keep_alive_s = 0", "between 1 and 1000000000"],
    ),
    (
        "keep-alive bound on an engine without keep_alive",
        '[engines.x]\nkind = "openai"\nurl = "http://h:1"\nmax_keep_alive_s = 60',
        {},
        ["max_keep_alive_s", "not a setting of a openai engine"],
    ),
    ("model with unknown engine", '[models."m"]\nengine = "nope"', {}, ['[models."m"] engine', '"nope"', "engines"]),
    ("model bad priority", '[models."m"]\npriority = "urgent"', {}, ["priority", '"urgent"', '"high"']),
    ("model bad memory", '[models."m"]\nmemory_gb = -3', {}, ["memory_gb = -3", "> 0"]),
    ("alias to nothing", '[aliases]\n"gpt-4" = ""', {}, ['"gpt-4"', "id of a model"]),
    ("alias chain", '[aliases]\na = "b"\nb = "c"', {}, ["itself an alias"]),
    ("not toml", "[gateway\nlisten=", {}, ["not valid TOML"]),
    (
        "env wrong type",
        "",
        {"ARK_GATEWAY_MAX_INFLIGHT": "many"},
        ["environment variable ARK_GATEWAY_MAX_INFLIGHT", '"many"', "an integer"],
    ),
    ("env bad port", "", {"ARK_GATEWAY_LISTEN": ":0"}, ["ARK_GATEWAY_LISTEN", "port between 1 and 65535"]),
    ("env unknown variable", "", {"ARK_GATEWAY_LISTN": "x"}, ["ARK_GATEWAY_LISTN", "not an ARK setting"]),
    (
        "env unknown engine",
        "",
        {"ARK_ENGINES_NOPE_URL": "http://h:1"},
        ["ARK_ENGINES_NOPE_URL", "not an ARK", "ARK_ENGINES_<NAME>_<KEY>", "engines in use: ollama, embedded"],
    ),
    (
        "env engine variable in the doubled form",
        "",
        {"ARK_ENGINES__OLLAMA__URL": "http://h:1"},
        ["ARK_ENGINES__OLLAMA__URL", "not an ARK setting", "ARK_ENGINES_<NAME>_<KEY>"],
    ),
    (
        "env key of another kind of engine",
        "",
        {"ARK_ENGINES_OLLAMA_N_THREADS": "2"},
        ["environment variable ARK_ENGINES_OLLAMA_N_THREADS", "not a setting of a ollama engine"],
    ),
    (
        "too many engines",
        "".join(f'[engines.e{i}]\nkind = "embedded"\n' for i in range(33)),
        {},
        ["[engines] declares 33 engines", "at most 32"],
    ),
]


@pytest.mark.parametrize(("name", "text", "env", "words"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_names_file_key_value_and_expectation(
    tmp_path: Path, name: str, text: str, env: dict[str, str], words: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, env)
    message = str(caught.value)
    if not env:
        assert str(tmp_path / "ark.toml") in message
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(config_path=tmp_path / "nope.toml", env={})


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_settings(config_path=tmp_path, env={})


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "ark.toml"
    path.write_text(f'master_key = "{KEY}"\n')
    path.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(ConfigError, match="permission denied"):
            load_settings(config_path=path, env={})
        return
    # root reads any file whatever its mode: check as an unprivileged user through the CLI
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed, so root cannot drop privileges")
    tmp_path.chmod(0o755)
    result = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "ark",
            "config",
            "check",
            "--config",
            str(path),
        ],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "permission denied" in result.stderr and str(path) in result.stderr


def test_file_that_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "ark.toml"
    path.write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(config_path=path, env={})


def test_init_file_parses_and_documents_every_setting(tmp_path: Path) -> None:
    key = generate_master_key()
    assert key.startswith("sk-ark-") and len(key) >= 7 + 32
    text = render_config(key, tmp_path)
    assert tomllib.loads(text)["master_key"] == key
    for _, declared in every_setting(Settings):
        assert declared.key in text and declared.help[:40] in " ".join(text.replace("#", " ").split()), declared.key
    for model in ("qwen3.5:35b", "devstral-small-2", "dolphin-mistral-24b", "nomic-embed-text", '"gpt-4"'):
        assert model in text
    (tmp_path / "ark.toml").write_text(text)
    settings = load_settings(config_path=tmp_path / "ark.toml", env={})
    assert settings.master_key.value == key and settings.data_dir == tmp_path


def test_reference_box_example_is_valid_when_uncommented(tmp_path: Path) -> None:
    text = render_config(KEY)
    example = text[text.index("# --- Example") :]
    uncommented = "\n".join(line[2:] if line.startswith("# ") else "" for line in example.splitlines()[2:])
    (tmp_path / "ark.toml").write_text(f'master_key = "{KEY}"\n' + uncommented)
    settings = load_settings(config_path=tmp_path / "ark.toml", env={})
    models = {m.id: m for m in settings.models}
    assert models["qwen3.5:35b"].memory_gb == 23 and models["qwen3.5:35b"].priority == "high"
    assert models["nomic-embed-text"].pinned is True
    assert settings.aliases == {"gpt-4": "qwen3.5:35b"}


def test_a_postgresql_store_is_shared_by_default_whatever_its_scheme_is_called(tmp_path: Path) -> None:
    for url, shared in (("postgres://u@h/db", True), ("postgresql+psycopg://u@h/db", True), ("", False)):
        settings = load_settings(env={"ARK_DATA_DIR": str(tmp_path), "ARK_STORE_URL": url})
        assert settings.store.is_shared is shared, url


NETWORK_VALUES = [
    (network.CidrList(), "10.8.0.1/24, fd00::/64", ("10.8.0.0/24", "fd00::/64")),
    (network.CidrList(), ["10.0.0.0/8", " 192.168.1.0/24"], ("10.0.0.0/8", "192.168.1.0/24")),
    (network.IpList(), "10.8.0.1, 1.1.1.1,", ("10.8.0.1", "1.1.1.1")),
    (network.IpList(), "", ()),
    (network.PortList(), "9000, 8443, 9000", (8443, 9000)),
    (network.PortList(), [443, "80"], (80, 443)),
    (network.NamedPorts(), "chat=3000, grafana=3001", {"chat": 3000, "grafana": 3001}),
    (network.Endpoint(), "[2001:DB8::1]:51820", "[2001:db8::1]:51820"),
    (network.Endpoint(), "VPN.example.org:51820", "vpn.example.org:51820"),
    (HostPort(), "[::1]:4000", Address("::1", 4000)),
]
BAD_NETWORK_VALUES = [
    (network.CidrList(), "10.8.0.0/33"),
    (network.CidrList(), "10.8.0.0/24; allow all"),
    (network.IpList(), "10.8.0.0/24"),
    (network.PortList(), "65536"),
    (network.PortList(), [True]),
    (network.PortList(), 443),
    (network.NamedPorts(), {"chat": 0}),
    (network.NamedPorts(), {"Chat": 3000}),
    (network.NamedPorts(), "chat 3000"),
    (network.Endpoint(), "vpn.example.org:0"),
    (network.Endpoint(), "vpn.example.org"),
    (network.Endpoint(), "vpn;example.org:51820"),
    (HostPort(), "127.0.0.1:65536"),
    (HostPort(), ":4000"),
]


@pytest.mark.parametrize(("kind", "value", "parsed"), NETWORK_VALUES)
def test_network_values_are_normalised(kind: Type[Any], value: Any, parsed: Any) -> None:
    assert kind.parse(value) == parsed


@pytest.mark.parametrize(("kind", "value"), BAD_NETWORK_VALUES)
def test_bad_network_values_are_refused_with_the_expectation(kind: Type[Any], value: Any) -> None:
    with pytest.raises(ValueError) as refused:
        kind.parse(value)
    assert str(refused.value) == kind.expected


def test_the_settings_classes_hold_the_defaults_the_loader_gives(tmp_path: Path) -> None:
    """One declaration: a section built with no arguments is what the loader gives for an empty file."""
    settings = load(tmp_path, "")
    for name in ("gateway", "store", "gpu", "console", "auth", "edge", "wireguard", "firewall", "monitor"):
        section_settings = getattr(settings, name)
        assert section_settings == type(section_settings)(), name


def _env_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def test_every_variable_the_reference_names_is_the_one_the_loader_reads(tmp_path: Path) -> None:
    """The environment column of docs/configuration.md, read back: each variable it names is accepted."""
    declared = {(path, s.key): s for path, s in every_setting(Settings)}
    engines = "".join(f'[engines.{k}]\nkind = "{k}"\nurl = "http://h:1"\n' for k in ("ollama", "openai"))
    engines += '[engines.embedded]\nkind = "embedded"\n'
    engines += f'[webhooks.embedded]\nurl = "http://h:1"\nsecret = "whsec_{"A" * 32}"\n'  # a NAME for [webhooks]
    path: tuple[str, ...] = ()
    checked = 0
    for line in configuration_markdown().splitlines():
        if line.startswith("## `["):
            path = (line.split("`[")[1].split(".")[0].split("]")[0],)
        if not line.startswith("| `"):
            continue
        cells = [cell.strip().strip("`") for cell in line.split(" | ")]
        key, env, found = cells[0].removeprefix("| `"), cells[-2], declared[path, cells[0].removeprefix("| `")]
        if env == "—" or found.default is None:
            continue
        name = (found.kinds or ("embedded",))[0]  # an engine of each kind, named for it
        var = env.replace("<NAME>", name.upper())
        assert var == env_name(*path, *([name] if "<NAME>" in env else []), key)
        load(tmp_path, engines, {var: _env_text(found.default)})  # raises when the loader does not know it
        checked += 1
    assert checked > 90
    assert "ARK_ENGINES__" not in configuration_markdown()


@section
class HelloSettings:
    """A section declared only in this test."""

    greeting: str = setting(Str(non_empty=True), "hello", "What the hello component says.")
    times: int = setting(Int(1, 10), 1, "How often it says it.")


@section(kind="kind", noun="voice")
class VoiceSettings:
    """One table per voice."""

    name: str
    kind: str = setting(Choice("loud", "soft"), None, "How the voice speaks.", required=True)
    volume: int = setting(Int(0, 11), 5, "How loud it is.", kinds=("loud",))


@section
class HelloRoot(Settings):
    hello: HelloSettings = table(HelloSettings)
    voices: tuple[VoiceSettings, ...] = tables(VoiceSettings)


def test_a_section_declared_once_is_loaded_checked_templated_and_documented(tmp_path: Path) -> None:
    """Adding a section is its class and one field on the root: nothing else in ark.config changes."""
    path = tmp_path / "ark.toml"
    path.write_text('[hello]\ngreeting = "hi"\n[voices.a]\nkind = "loud"\n[voices.b]\nkind = "soft"\n')
    env = {"ARK_HELLO_TIMES": "3", "ARK_VOICES_A_VOLUME": "11"}
    settings = load_settings(config_path=path, env=env, schema=HelloRoot)
    assert (settings.hello.greeting, settings.hello.times) == ("hi", 3)  # file, environment
    assert [(v.name, v.kind, v.volume) for v in settings.voices] == [("a", "loud", 11), ("b", "soft", 5)]
    assert settings.gateway.listen.port == 4000  # the rest is still there
    assert load_settings(env={}, schema=HelloRoot).hello == HelloSettings()  # defaults

    for text, extra, words in [
        ("[hello]\ntimes = 11\n", {}, ["[hello] times = 11", "between 1 and 10"]),
        ("[hello]\ngreting = 1\n", {}, ["unknown key [hello] greting", 'did you mean "greeting"']),
        ("[voices.c]\nvolume = 1\n", {}, ["[voices.c] kind is missing"]),
        ('[voices.c]\nkind = "soft"\nvolume = 1\n', {}, ["[voices.c] volume: not a setting of a soft voice"]),
        ("", {"ARK_HELLO_GRETING": "x"}, ["ARK_HELLO_GRETING", "not an ARK setting", "ARK_VOICES_<NAME>_<KEY>"]),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError) as caught:
            load_settings(config_path=path, env=extra, schema=HelloRoot)
        assert all(word in str(caught.value) for word in words), (words, str(caught.value))
    path.write_text("[hello]\n")
    with pytest.raises(ConfigError, match="unknown key hello"):
        load_settings(config_path=path, env={})  # the real root does not know it

    template = render_config(KEY, schema=HelloRoot)
    assert "# A section declared only in this test.\n[hello]\n# What the hello component says." in template
    assert "# --- [voices.NAME]" in template and "ARK_VOICES_<NAME>_<KEY>" in template
    path.write_text(template)
    assert load_settings(config_path=path, env={}, schema=HelloRoot).hello == HelloSettings()

    reference = configuration_markdown(HelloRoot)
    assert "## `[hello]`\n\nA section declared only in this test." in reference
    assert "| `times` | an integer between 1 and 10 | `1` | `ARK_HELLO_TIMES` | How often it says it. |" in reference
    assert "| `volume` | an integer between 0 and 11 | `5` | loud | `ARK_VOICES_<NAME>_VOLUME` |" in reference
    assert "`ARK_VOICES_<NAME>_<KEY>` for a setting of `[voices.NAME]`" in " ".join(reference.split())
