"""`ark backup` / `ark restore` for real: an online backup of a running `ark up` while requests keep coming,
restored into an empty data directory on SQLite and on PostgreSQL, every key, user, team and ledger row
back and a restored ARK serving the old keys; sealed secrets; damaged or hostile archives refused with
nothing written."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner

from ark.backup import archive, crypto
from ark.backup.crypto import BackupError
from ark.cli.main import main
from tests.conftest import MASTER_KEY, ArkProcess, Postgres, start_ark, stop_ark, wait_until
from tests.fakes.ollama import FakeOllama

MASTER = {"Authorization": f"Bearer {MASTER_KEY}"}
PASSPHRASE = "correct horse battery staple"
CONFIG = f"""master_key = "{MASTER_KEY}"
[gateway]
listen = "127.0.0.1:{{PORT}}"
[store]
url = "{{STORE}}"
[engines.ollama]
kind = "ollama"
url = "{{OLLAMA}}"
gpu_managed = "no"
[models."llama3.2:1b"]
input_cost_per_token = 0.001
"""


def ark_cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m ark ARGS` as its own process (a backup lowers its own CPU priority: not the test's)."""
    child = {k: v for k, v in os.environ.items() if not k.startswith("ARK_")} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "ark", *args], input=stdin, capture_output=True, text=True, timeout=300, env=child
    )


def chat(ark: ArkProcess, key: str = MASTER_KEY) -> int:
    body = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(ark.url + "/v1/chat/completions", headers=headers, json=body, timeout=30).status_code


def populate(ark: ArkProcess) -> dict[str, Any]:
    """People, a team, keys and requests: what a restore must bring back."""
    env = {"ARK_CONFIG": str(ark.config), "ARK_DATA_DIR": str(ark.data_dir)}
    for name in ("ann", "ben"):
        made = CliRunner().invoke(main, ["users", "add", name, "--password-stdin"], input="a long password 1", env=env)
        assert made.exit_code == 0, made.output
    team = httpx.post(ark.url + "/team/new", headers=MASTER, json={"team_alias": "lab", "max_budget": 9}).json()
    keys = [
        httpx.post(
            ark.url + "/key/generate", headers=MASTER, json={"key_alias": f"k{i}", "team_id": team["team_id"]}
        ).json()["key"]
        for i in range(3)
    ]
    for key in keys:
        assert chat(ark, key) == 200
    return {"team": team["team_id"], "keys": keys}


@pytest.fixture
def ollama(loop_thread: Any) -> Iterator[FakeOllama]:
    fake = FakeOllama(models=("llama3.2:1b",), reply_tokens=3)
    loop_thread.run(fake.start())
    yield fake
    loop_thread.run(fake.stop())


def start(tmp: Path, ollama: FakeOllama, store: str = "") -> ArkProcess:
    tmp.mkdir(parents=True, exist_ok=True)
    return start_ark(CONFIG.replace("{OLLAMA}", ollama.url).replace("{STORE}", store), tmp)


class Load:
    """Requests, one after another, until stopped: a backup is taken while the gateway serves."""

    def __init__(self, ark: ArkProcess, key: str) -> None:
        self.ark, self.key, self.done, self.statuses = ark, key, threading.Event(), []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.done.is_set():
            self.statuses.append(chat(self.ark, self.key))

    def __enter__(self) -> Load:
        self.thread.start()
        assert wait_until(lambda: len(self.statuses) >= 3, 30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(30)


def backup_of(ark: ArkProcess, out: Path, *extra: str, stdin: str | None = None) -> Path:
    where = ("--config", str(ark.config), "--data-dir", str(ark.data_dir))
    made = ark_cli("backup", *where, "--out", str(out), "--json", *extra, stdin=stdin)
    assert made.returncode == 0, made.stderr + made.stdout
    return Path(orjson.loads(made.stdout)["archive"])


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def test_an_online_backup_restores_whole_into_an_empty_data_dir(tmp_path: Path, ollama: FakeOllama) -> None:
    ark = start(tmp_path / "a", ollama)
    try:
        made = populate(ark)
        (ark.data_dir / "open-webui").mkdir()
        (ark.data_dir / "open-webui" / "uploads.txt").write_text("a person's upload")
        (ark.data_dir / "images").mkdir(exist_ok=True)
        (ark.data_dir / "images" / ("0" * 32)).write_bytes(b"png")
        with Load(ark, made["keys"][0]) as load:
            path = backup_of(ark, tmp_path / "backups")
        assert set(load.statuses) == {200}  # the gateway served throughout
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        stored = members(path)
        manifest = orjson.loads(stored["manifest.json"])
        counts = manifest["database"]["counts"]
        assert counts["users"] == 2 and counts["keys"] == 3 and counts["teams"] == 1 and counts["ledger_rows"] >= 6
        assert manifest["database"]["schema"] and not manifest["secrets"]["sealed"]
        assert "data/open-webui/uploads.txt" in stored and f"data/images/{'0' * 32}" in stored
        assert not any(name.startswith(("data/logs/", "data/models/")) for name in stored)  # made again, not kept
        with tarfile.open(fileobj=io.BytesIO(stored["secrets.tar"])) as secrets:
            assert {"config/ark.toml", "data/auth.key"} <= set(secrets.getnames())
        auth_key = (ark.data_dir / "auth.key").read_bytes()
        users = httpx.get(ark.url + "/user/list", headers=MASTER).json()
    finally:
        stop_ark(ark)

    target = tmp_path / "restored" / "data"
    done = ark_cli("restore", str(path), "--data-dir", str(target))
    assert done.returncode == 0, done.stderr + done.stdout
    assert "ledger rows" in done.stdout
    assert (target / "auth.key").read_bytes() == auth_key
    assert (target / "open-webui" / "uploads.txt").read_text() == "a person's upload"
    assert archive.restored_counts(target) == counts  # exactly what the archive's snapshot held
    # the restored ARK serves the old keys, knows the people, and has the ledger
    text = (target / "ark.toml").read_text()
    port = text.split('listen = "127.0.0.1:')[1].split('"')[0]
    restored = start_ark(text.replace(port, "{PORT}"), tmp_path / "restored")
    try:
        assert chat(restored, made["keys"][1]) == 200
        again = httpx.get(restored.url + "/user/list", headers=MASTER).json()
        assert [u["email"] for u in again] == [u["email"] for u in users]
        logs = httpx.get(restored.url + "/spend/logs", headers=MASTER, params={"limit": "100000"}).json()
        assert len(logs) >= counts["ledger_rows"]
    finally:
        stop_ark(restored)


def test_sealed_secrets_need_the_passphrase(tmp_path: Path, ollama: FakeOllama) -> None:
    ark = start(tmp_path / "a", ollama)
    try:
        populate(ark)
        path = backup_of(ark, tmp_path / "backups", "--passphrase-stdin", "--without-media", stdin=PASSPHRASE + "\n")
        auth_key = (ark.data_dir / "auth.key").read_bytes()
    finally:
        stop_ark(ark)
    stored = members(path)
    assert "secrets.tar" not in stored and "secrets.tar.sealed" in stored
    assert auth_key not in gzip.decompress(path.read_bytes())  # nowhere in the archive in the clear
    assert MASTER_KEY.encode() not in gzip.decompress(path.read_bytes())  # nor the config's master key
    target = tmp_path / "restored"
    refused = ark_cli("restore", str(path), "--data-dir", str(target))
    assert refused.returncode != 0 and "sealed with a passphrase" in refused.stderr
    wrong = ark_cli("restore", str(path), "--data-dir", str(target), "--passphrase-stdin", stdin="not the one at all")
    assert wrong.returncode != 0 and "passphrase is wrong" in wrong.stderr
    assert not target.exists()  # nothing written either time
    assert not list(tmp_path.glob(".ark-restore-*"))  # and nothing left behind
    right = ark_cli("restore", str(path), "--data-dir", str(target), "--passphrase-stdin", stdin=PASSPHRASE)
    assert right.returncode == 0, right.stderr
    assert (target / "auth.key").read_bytes() == auth_key
    short = ark_cli("backup", "--data-dir", str(target), "--passphrase-stdin", stdin="short")
    assert short.returncode != 0 and "at least 12 characters" in short.stderr


def damaged(path: Path, tmp: Path, change: str) -> Path:
    """A copy of the archive with one thing changed."""
    out = tmp / f"{change}.tar.gz"
    stored = members(path)
    if change == "byte":
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        out.write_bytes(bytes(raw))
        return out
    if change == "file":
        name = next(n for n in stored if n.startswith("database/"))
        stored[name] = stored[name][:-1] + bytes([stored[name][-1] ^ 1])
    if change == "truncated":
        out.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return out
    with tarfile.open(out, "w:gz") as tar:
        for name, data in stored.items():
            info = tarfile.TarInfo("../escape" if change == "escape" and name == "secrets.tar" else name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if change == "link":
            link = tarfile.TarInfo("data/evil")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(link)
    return out


def test_a_damaged_or_hostile_archive_changes_nothing(tmp_path: Path, ollama: FakeOllama) -> None:
    ark = start(tmp_path / "a", ollama)
    try:
        populate(ark)
        path = backup_of(ark, tmp_path / "backups")
    finally:
        stop_ark(ark)
    said = {  # a flipped byte: gzip's CRC, or the member's checksum when the damaged stream still inflates
        "byte": ("not a readable ARK backup", "does not match its checksum"),
        "truncated": "not a readable ARK backup",
        "file": "does not match its checksum",
        "escape": "outside itself",
        "link": "not a plain file",
    }
    for change, message in said.items():
        bad = damaged(path, tmp_path, change)
        target = tmp_path / f"restore-{change}"
        done = ark_cli("restore", str(bad), "--data-dir", str(target))
        messages = message if isinstance(message, tuple) else (message,)
        assert done.returncode == 1 and any(m in done.stderr for m in messages), (change, done.stderr)
        assert not target.exists(), change
        assert not (tmp_path / "escape").exists()
    assert not list(tmp_path.glob(".ark-restore-*"))
    # a data directory in use is never overwritten, even by a good archive
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "ark.db").write_bytes(b"someone's database")
    done = ark_cli("restore", str(path), "--data-dir", str(busy))
    assert done.returncode == 1 and "is not empty" in done.stderr
    assert (busy / "ark.db").read_bytes() == b"someone's database"
    verified = ark_cli("backup", "verify", str(path))
    assert verified.returncode == 0 and "good" in verified.stdout


def test_a_postgresql_backup_restores_into_an_empty_database(
    tmp_path: Path, ollama: FakeOllama, postgres: Postgres
) -> None:
    ark = start(tmp_path / "a", ollama, postgres.create_database())
    try:
        made = populate(ark)
        with Load(ark, made["keys"][2]):
            path = backup_of(ark, tmp_path / "backups")
    finally:
        stop_ark(ark)
    manifest = orjson.loads(members(path)["manifest.json"])
    assert manifest["database"]["kind"] == "postgresql" and "database/ark.pgdump" in members(path)
    counts = manifest["database"]["counts"]
    empty = postgres.create_database()
    target = tmp_path / "restored"
    done = ark_cli("restore", str(path), "--data-dir", str(target), "--store-url", empty)
    assert done.returncode == 0, done.stderr + done.stdout
    assert archive.restored_counts(target, empty) == counts
    again = ark_cli("restore", str(path), "--data-dir", str(tmp_path / "again"), "--store-url", empty)
    assert again.returncode == 1 and "is not empty" in again.stderr  # never over a database in use


def test_sealing_is_authenticated_and_costly_to_guess() -> None:
    sealed = crypto.seal(b"secret bytes", PASSPHRASE)
    assert crypto.unseal(sealed, PASSPHRASE, crypto.KDF) == b"secret bytes"
    for blob in (sealed[:-1] + bytes([sealed[-1] ^ 1]), sealed[:40]):
        with pytest.raises(BackupError):
            crypto.unseal(blob, PASSPHRASE, crypto.KDF)
    with pytest.raises(BackupError, match="out of range"):
        crypto.unseal(sealed, PASSPHRASE, {**crypto.KDF, "n": 2**30})  # a hostile manifest cannot exhaust memory
    assert crypto.KDF["n"] >= 2**17


def test_old_backups_are_pruned_to_the_newest(tmp_path: Path) -> None:
    for hour in range(5):
        (tmp_path / archive.backup_name(1_800_000_000 + 3600 * hour)).write_bytes(b"x")
    (tmp_path / "unrelated.tar.gz").write_bytes(b"x")
    gone = archive.prune(tmp_path, 2)
    assert len(gone) == 3 and [p.name for p in archive.backups(tmp_path)] == [
        archive.backup_name(1_800_000_000 + 3600 * 3),
        archive.backup_name(1_800_000_000 + 3600 * 4),
    ]
    assert (tmp_path / "unrelated.tar.gz").exists()


def test_ark_up_makes_backups_on_its_schedule(tmp_path: Path, ollama: FakeOllama) -> None:
    tmp_path.mkdir(exist_ok=True)
    text = CONFIG.replace("{OLLAMA}", ollama.url).replace("{STORE}", "")
    ark = start_ark(text + "[backup]\nevery_hours = 0.0003\nkeep = 1\nmedia = false\n", tmp_path)
    try:
        folder = ark.data_dir / "backups"

        def reported() -> str:
            listed = httpx.get(ark.url + "/admin/services", headers=MASTER, timeout=5).json()["services"]
            return next((s["why"] for s in listed if s["name"] == "backup"), "")

        assert wait_until(lambda: "last backup at" in reported(), 60), reported()
        metrics = httpx.get(ark.url + "/metrics", timeout=5).text
        assert "ark_backup_last_success_timestamp_seconds " in metrics
        made = archive.backups(folder)[-1]
        assert wait_until(lambda: archive.backups(folder)[-1] != made, 60)  # a second one...
        assert wait_until(lambda: len(archive.backups(folder)) == 1, 30)  # ...and only the newest kept
    finally:
        stop_ark(ark)
    kept = archive.backups(folder)  # one, or two when ARK stopped between a backup's rename and its prune
    assert 1 <= len(kept) <= 2
    verified = ark_cli("backup", "verify", str(kept[-1]))
    assert verified.returncode == 0, verified.stderr


def made_box(tmp_path: Path) -> Any:
    """A data directory with a database, a config that is a link (config management's way), certbot's
    links, the local CA; no `ark up` needed for what a backup keeps of files."""
    from ark.config import load_settings
    from ark.store import Store

    (tmp_path / "etc").mkdir()
    (tmp_path / "box" / "data").mkdir(parents=True)
    real = tmp_path / "etc" / "ark.toml"
    real.write_text(f'master_key = "{MASTER_KEY}"\n')
    config = tmp_path / "box" / "ark.toml"
    config.symlink_to(real)
    settings = load_settings(config_path=config, data_dir=tmp_path / "box" / "data", env={})
    Store.open(settings).close()
    data = settings.data_dir
    (data / "auth.key").write_bytes(b"k" * 32)
    live, kept = data / "certbot" / "config" / "live" / "example.org", data / "certbot" / "config" / "archive"
    live.mkdir(parents=True)
    kept.mkdir(parents=True)
    (kept / "privkey1.pem").write_text("PRIVATE")
    (live / "privkey.pem").symlink_to("../../archive/privkey1.pem")
    (live / "outside.pem").symlink_to("/etc/hostname")  # out of its folder: not kept as a link
    (data / "deploy" / "certs").mkdir(parents=True)
    (data / "deploy" / "certs" / "ca.key").write_text("CA KEY")
    (data / "deploy" / "nginx.conf").write_text("made again")
    return settings


def test_links_the_ca_and_a_linked_config_come_back(tmp_path: Path) -> None:
    settings = made_box(tmp_path)
    made = archive.create(settings, tmp_path / "out")
    target = tmp_path / "restored" / "data"
    staged = archive.stage(made.path, target.parent)
    try:
        config = archive.install(staged, target, config_to=None)
    finally:
        staged.discard()
    assert config is not None and config.read_text() == f'master_key = "{MASTER_KEY}"\n'  # the file, not a link
    assert not config.is_symlink() and oct(config.stat().st_mode & 0o777) == "0o600"
    live = target / "certbot" / "config" / "live" / "example.org" / "privkey.pem"
    assert live.is_symlink() and live.read_text() == "PRIVATE"  # certbot's layout, as it was
    assert not (live.parent / "outside.pem").exists()
    assert (target / "deploy" / "certs" / "ca.key").read_text() == "CA KEY"  # the local CA: clients trust it
    assert not (target / "deploy" / "nginx.conf").exists()  # the rest of the bundle is made again


def test_a_manifest_cannot_name_a_file_outside_the_archive(tmp_path: Path) -> None:
    settings = made_box(tmp_path)
    made = archive.create(settings, tmp_path / "out")
    victim = tmp_path / "out" / "victim.db"
    victim.write_text("an operator's database")
    stored = members(made.path)
    manifest = orjson.loads(stored["manifest.json"])
    manifest["database"]["file"] = str(victim)  # absolute: outside the archive
    stored["manifest.json"] = orjson.dumps(manifest)
    forged = tmp_path / "out" / "forged.tar.gz"
    with tarfile.open(forged, "w:gz") as tar:
        for name, data in stored.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(BackupError, match="manifest is not one ARK writes"):
        archive.stage(forged, tmp_path / "out")
    assert victim.read_text() == "an operator's database"
    # nor a restore into a link, even an empty folder's: refused before anything is written
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    staged = archive.stage(made.path, tmp_path)
    try:
        with pytest.raises(BackupError, match="is a symbolic link"):
            archive.install(staged, tmp_path / "link", config_to=None)
    finally:
        staged.discard()
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_pruning_keeps_the_archive_just_made_and_ignores_other_names(tmp_path: Path) -> None:
    newest = tmp_path / archive.backup_name(1_800_000_000)
    older = tmp_path / archive.backup_name(1_700_000_000)
    odd = tmp_path / "ark-backup-before-upgrade.tar.gz"  # a name of the operator's: never ARK's to delete
    for path in (newest, older, odd):
        path.write_bytes(b"x")
    future = tmp_path / archive.backup_name(1_900_000_000)  # a clock that went backwards made this one
    future.write_bytes(b"x")
    assert archive.prune(tmp_path, 1, spare=newest) == [older, future]
    assert newest.exists() and odd.exists()


def test_verify_unpacks_into_a_private_folder_it_removes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ark.cli import backup as backup_cli

    settings = made_box(tmp_path)
    folder = tmp_path / "backups"
    made = archive.create(settings, folder)
    bad = folder / "cut.tar.gz"
    bad.write_bytes(made.path.read_bytes()[: made.path.stat().st_size // 2])
    private = tmp_path / "tmp"  # $TMPDIR
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    monkeypatch.setattr(backup_cli, "_stop_cleanly", lambda: None)  # the test's own process: no SIGTERM handler
    unpacked: list[Path] = []
    extract = archive._extract

    def seen(tar: tarfile.TarFile, into: Path, **kwargs: Any) -> dict[str, str]:
        unpacked.append(into)
        return extract(tar, into, **kwargs)

    monkeypatch.setattr(archive, "_extract", seen)
    before = sorted(folder.iterdir())
    good = CliRunner().invoke(main, ["backup", "verify", str(made.path)])
    assert good.exit_code == 0 and "good" in good.output, good.output
    broken = CliRunner().invoke(main, ["backup", "verify", str(bad)])
    assert broken.exit_code == 1 and "not a readable ARK backup" in broken.output
    assert unpacked and all(path.is_relative_to(private) for path in unpacked)  # never beside the archives
    assert sorted(folder.iterdir()) == before and list(private.iterdir()) == []  # and removed, on error too


def test_the_copy_before_a_migration_is_on_disk_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ark.store.migrate import HEAD, _copy_before, database_url, open_engine

    settings = made_box(tmp_path)
    engine = open_engine(database_url("", settings.data_dir))
    synced: list[str] = []
    fsync = os.fsync

    def recorded(descriptor: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recorded)
    try:
        copy = _copy_before(engine, "0005", HEAD, tmp_path / "copies")
    finally:
        engine.dispose()
    assert synced == [str(copy), str(copy.parent)]  # the file, then the folder that names it


def test_a_folder_the_backup_cannot_read_fails_it_rather_than_being_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beside containers, data folders belong to the users the images run as; one the backup's user cannot
    read must not vanish from the archive in silence (os.walk skips it unless told otherwise)."""
    data = tmp_path / "data"
    (data / "grafana").mkdir(parents=True)
    (data / "grafana" / "grafana.db").write_bytes(b"dashboards")
    real = os.scandir

    def scandir(path: Any = ".") -> Any:
        if Path(path) == data / "grafana":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    assert {f.rel for f in archive.data_files(data, media=True)} == {"grafana/grafana.db"}
    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(BackupError, match=r"cannot read .*/grafana: Permission denied\. The backup would miss it"):
        list(archive.data_files(data, media=True))
