"""Copies of backups in an S3-compatible store, against a real one: moto's S3 server as a process on a port
of its own, signing checked (IAM access keys, SigV4 verified: a wrong secret key is refused as on AWS). A
backup lands in the bucket byte for byte, the bucket keeps the newest copies, `ark backup list --remote`
lists them, a restore from the bucket round-trips, a damaged copy is refused with nothing written, bad
credentials keep the local archive and say why, the secret key is never printed, and `ark up` copies its
scheduled backups and reports a copy that failed."""

from __future__ import annotations

import hashlib
import io
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import orjson
import pytest
from click.testing import CliRunner

from ark.backup import archive, s3
from ark.backup.crypto import BackupError
from ark.cli.main import main
from ark.config import Settings, load_settings
from ark.config.types import Secret
from ark.store import Store
from ark.store.ledger import UsageRow, ingest
from tests.conftest import MASTER_KEY, free_port, start_ark, stop_ark, stop_process, wait_until
from tests.test_backup import ark_cli, made_box, members

REGION = "us-east-1"
POLICY = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'


@dataclass
class S3Server:
    """moto's S3 server, and an IAM user's access key that may do anything in S3."""

    url: str
    key_id: str
    secret: str

    def client(self) -> Any:
        session = boto3.session.Session(
            aws_access_key_id=self.key_id, aws_secret_access_key=self.secret, region_name=REGION
        )
        return session.client("s3", endpoint_url=self.url)

    def new_bucket(self) -> str:
        name = f"ark-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def remote(self, bucket: str, prefix: str = "box1", keep: int = 7) -> s3.Remote:
        return s3.Remote(bucket, prefix, self.url, REGION, self.key_id, Secret(self.secret), keep)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """`python -m moto.server` on a free port. Once an IAM user and its key exist, signing is switched on
    (moto's /moto-api/reset-auth): from then on every request is checked as AWS checks it."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"moto.server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    try:
        assert wait_until(listening, 30), log.read_text()
        url = f"http://127.0.0.1:{port}"
        boot = boto3.session.Session(aws_access_key_id="boot", aws_secret_access_key="boot", region_name=REGION)
        iam = boot.client("iam", endpoint_url=url)
        iam.create_user(UserName="ark")
        iam.put_user_policy(UserName="ark", PolicyName="s3", PolicyDocument=POLICY)
        key = iam.create_access_key(UserName="ark")["AccessKey"]
        assert httpx.post(url + "/moto-api/reset-auth", content=b"0", timeout=5).status_code == 200
        yield S3Server(url, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        stop_process(proc)


def secret_file(folder: Path, secret: str, mode: int = 0o600) -> Path:
    path = folder / f"s3-{uuid.uuid4().hex[:6]}.secret"
    path.write_text(secret + "\n")
    os.chmod(path, mode)
    return path


def s3_section(server: S3Server, bucket: str, secret: Path, *, keep: int = 0, prefix: str = "box1") -> str:
    return (
        f'[backup]\ns3_bucket = "{bucket}"\ns3_prefix = "{prefix}"\ns3_endpoint = "{server.url}"\n'
        f's3_access_key_id = "{server.key_id}"\ns3_secret_access_key_file = "{secret}"\ns3_keep = {keep}\n'
    )


def populated_box(tmp_path: Path, section: str) -> Settings:
    """A data directory with people, a key and ledger rows (no `ark up`), its config naming the store."""
    settings = made_box(tmp_path)
    assert settings.config_path is not None
    with settings.config_path.open("a") as config:  # the link's file
        config.write(section)
    env = {"ARK_CONFIG": str(settings.config_path), "ARK_DATA_DIR": str(settings.data_dir)}
    for name in ("ann", "ben"):
        made = CliRunner().invoke(main, ["users", "add", name, "--password-stdin"], input="a long password 1", env=env)
        assert made.exit_code == 0, made.output
    store = Store.open(settings)
    try:
        _, key = store.keys.create_key({"key_alias": "k1"})
        rows = [
            UsageRow(f"req-{i}", f"2026-12-01T00:00:0{i}+00:00", "/v1/chat/completions", 200, 5.0, key_id=key.id)
            for i in range(3)
        ]
        ingest(store.engine, [asdict(row) for row in rows])
    finally:
        store.close()
    return settings


def where(settings: Settings) -> tuple[str, ...]:
    return ("--config", str(settings.config_path), "--data-dir", str(settings.data_dir))


def test_a_backup_is_copied_listed_and_restored_from_the_bucket(tmp_path: Path, s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    secret = secret_file(tmp_path, s3_server.secret)
    settings = populated_box(tmp_path, s3_section(s3_server, bucket, secret))
    made = ark_cli("backup", *where(settings), "--json")
    assert made.returncode == 0, made.stderr + made.stdout
    said = orjson.loads(made.stdout)
    path = Path(said["archive"])
    counts = said["manifest"]["database"]["counts"]
    assert counts["users"] == 2 and counts["keys"] == 1 and counts["ledger_rows"] == 3
    key = f"box1/{path.name}"
    assert said["s3"]["url"] == f"s3://{bucket}/{key}"
    stored = s3_server.client().get_object(Bucket=bucket, Key=key)
    body = stored["Body"].read()
    assert body == path.read_bytes()  # byte for byte
    assert stored["Metadata"]["sha256"] == hashlib.sha256(body).hexdigest()
    listed = ark_cli("backup", "list", "--remote", *where(settings))
    assert listed.returncode == 0 and f"s3://{bucket}/{key}" in listed.stdout, listed.stderr

    # restored from the bucket into an empty data directory, on a box that lost everything but its config
    auth_key = (settings.data_dir / "auth.key").read_bytes()
    target = tmp_path / "restored" / "data"
    done = ark_cli("restore", f"s3://{bucket}/{key}", "--data-dir", str(target), "--config", str(settings.config_path))
    assert done.returncode == 0, done.stderr + done.stdout
    assert archive.restored_counts(target) == counts  # people, the key and the ledger are back
    assert (target / "auth.key").read_bytes() == auth_key
    assert not list(target.parent.glob(".ark-*"))  # the download and the staging folder are gone
    by_name = tmp_path / "by-name" / "data"
    done = ark_cli("restore", path.name, "--data-dir", str(by_name), "--config", str(settings.config_path))
    assert done.returncode == 0, done.stderr + done.stdout
    assert archive.restored_counts(by_name) == counts
    for output in (made, listed, done):
        assert s3_server.secret not in output.stdout + output.stderr
    assert s3_server.secret.encode() not in b"".join(archive_members(path).values())  # only the file's name
    # the restored config copies to the same place: said, as two boxes there would prune each other's copies
    said = f"copies backups to s3://{bucket}/box1/ and deletes older copies there: while the box it came from still "
    assert said + "runs, give this one its own [backup] s3_prefix" in done.stdout, done.stdout


def archive_members(path: Path) -> dict[str, bytes]:
    """Every file in the archive, and every file in its secrets."""
    found = members(path)
    with tarfile.open(fileobj=io.BytesIO(found["secrets.tar"])) as secrets:
        for member in secrets:
            handle = secrets.extractfile(member)
            if handle is not None:
                found[member.name] = handle.read()
    return found


def test_the_bucket_keeps_the_newest_copies_and_nothing_else_is_touched(tmp_path: Path, s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    client = s3_server.client()
    older = [archive.backup_name(1_800_000_000 + 3600 * hour) for hour in range(4)]
    for name in older:
        client.put_object(Bucket=bucket, Key=f"box1/{name}", Body=b"older")
    others = ["box1/notes.txt", "box2/" + older[0], "box1/deeper/" + older[0], older[1]]  # never ARK's to prune
    for key in others:
        client.put_object(Bucket=bucket, Key=key, Body=b"someone's")
    new = tmp_path / archive.backup_name(1_800_000_000 + 3600 * 10)
    new.write_bytes(os.urandom(1000))
    pushed = s3.push(s3.Bucket(s3_server.remote(bucket, keep=2)), new)
    assert [c.name for c in pushed.pruned] == older[:3] and not pushed.prune_failed
    keys = {item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {f"box1/{older[3]}", f"box1/{new.name}", *others}


def test_a_big_archive_goes_in_parts_each_checked(tmp_path: Path, s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    path = tmp_path / archive.backup_name(1_800_000_000)
    path.write_bytes(os.urandom((11 << 20) + 17))  # three parts of 5 MiB (S3's smallest)
    store = s3.Bucket(s3_server.remote(bucket, prefix=""), part=5 << 20)
    copy = store.upload(path)
    head = s3_server.client().head_object(Bucket=bucket, Key=copy.key, ChecksumMode="ENABLED")
    assert head["ETag"].endswith('-3"')  # a multipart upload...
    _, expected = s3.expected_checksum(path, 5 << 20)
    assert head["ChecksumSHA256"].split("-")[0] == expected  # ...whose parts' SHA-256s the store checked
    (tmp_path / "down").mkdir()
    fetched = store.download(bucket, copy.key, tmp_path / "down")
    assert fetched.read_bytes() == path.read_bytes()
    # ARK stopping once the first part's bytes are on their way: the transfer stops, its parts are given up,
    # no copy is left
    stop = threading.Event()
    moved: list[int] = []

    def stopping(n: int) -> None:
        moved.append(n)
        stop.set()

    other = path.with_name(archive.backup_name(1_800_003_600))
    path.rename(other)
    with pytest.raises(BackupError, match="was stopped"):
        store.upload(other, progress=stopping, stop=stop)
    assert moved  # stopped in the middle, not before it began
    client = s3_server.client()
    assert [c.name for c in store.copies()] == [path.name]
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_settings_that_cannot_reach_a_store_are_refused_plainly(tmp_path: Path) -> None:
    def remote(**values: str) -> s3.Remote | None:
        env = {"ARK_BACKUP_" + k.upper(): v for k, v in values.items()}
        return s3.remote_of(load_settings(data_dir=tmp_path, env=env))

    assert remote() is None  # no bucket: no copies
    with pytest.raises(BackupError, match="s3_endpoint = 'minio:9000': expected an http"):
        remote(s3_bucket="b", s3_endpoint="minio:9000")
    with pytest.raises(BackupError, match="s3_secret_access_key_file is not"):
        remote(s3_bucket="b", s3_access_key_id="AKIA")
    with pytest.raises(BackupError, match="cannot read the S3 secret key"):
        remote(s3_bucket="b", s3_access_key_id="AKIA", s3_secret_access_key_file=str(tmp_path / "none"))
    found = remote(
        s3_bucket="b",
        s3_prefix="/a/b/",
        s3_access_key_id="AKIA",
        s3_secret_access_key_file=str(secret_file(tmp_path, "the-secret")),
    )
    assert found is not None and found.key("x") == "a/b/x" and found.secret.value == "the-secret" and found.keep == 7


def test_a_damaged_copy_is_refused_and_nothing_is_written(tmp_path: Path, s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    secret = secret_file(tmp_path, s3_server.secret)
    settings = populated_box(tmp_path, s3_section(s3_server, bucket, secret))
    made = archive.create(settings, settings.backups_dir)
    copy = s3.Bucket(s3_server.remote(bucket)).upload(made.path)
    client = s3_server.client()
    raw = bytearray(made.path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    said = {
        # changed in the bucket, its recorded SHA-256 kept: refused before it is unpacked
        "recorded": ({"sha256": hashlib.sha256(made.path.read_bytes()).hexdigest()}, "does not match the checksum"),
        # replaced whole, no SHA-256 recorded: refused by the archive's own checks, as a local one is
        "replaced": ({}, ("not a readable ARK backup", "does not match its checksum")),
    }
    for case, (metadata, message) in said.items():
        client.put_object(Bucket=bucket, Key=copy.key, Body=bytes(raw), Metadata=metadata)
        target = tmp_path / case / "data"
        done = ark_cli("restore", copy.url, "--data-dir", str(target), "--config", str(settings.config_path))
        messages = message if isinstance(message, tuple) else (message,)
        assert done.returncode == 1 and any(m in done.stderr for m in messages), (case, done.stderr)
        assert not target.exists() and list(target.parent.iterdir()) == [], case  # nothing written or left
    # a busy data directory is never written over, even from a good copy
    client.put_object(Bucket=bucket, Key=copy.key, Body=made.path.read_bytes())
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "ark.db").write_bytes(b"someone's database")
    done = ark_cli("restore", copy.url, "--data-dir", str(busy), "--config", str(settings.config_path))
    assert done.returncode == 1 and "is not empty" in done.stderr
    assert [p.name for p in busy.iterdir()] == ["ark.db"] and (busy / "ark.db").read_bytes() == b"someone's database"


def test_bad_credentials_keep_the_archive_and_say_why(tmp_path: Path, s3_server: S3Server) -> None:
    """moto checks SigV4 signatures against the IAM user's secret key once signing is on: a wrong secret is
    refused as AWS refuses it (SignatureDoesNotMatch)."""
    bucket = s3_server.new_bucket()
    wrong = "w" + s3_server.secret[1:]
    wrong_file = secret_file(tmp_path, wrong)
    settings = populated_box(tmp_path, s3_section(s3_server, bucket, wrong_file))
    done = ark_cli("backup", *where(settings))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "refused the credentials (SignatureDoesNotMatch)" in done.stderr
    assert "is made and kept" in done.stderr
    kept = archive.backups(settings.backups_dir)
    assert len(kept) == 1 and f"Backup: {kept[0]}" in done.stdout  # the local backup is whole
    assert ark_cli("backup", "verify", str(kept[0])).returncode == 0
    assert wrong not in done.stdout + done.stderr and s3_server.secret not in done.stdout + done.stderr
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket=bucket)
    listed = ark_cli("backup", "list", "--remote", *where(settings))
    assert listed.returncode == 1 and "refused the credentials" in listed.stderr and wrong not in listed.stderr

    # a secret key file others may read is refused before it is used; the archive is kept all the same
    loose = secret_file(tmp_path, s3_server.secret, mode=0o644)
    config = tmp_path / "etc" / "ark.toml"
    config.write_text(config.read_text().replace(str(wrong_file), str(loose)))
    pushed = ark_cli("backup", "push", kept[0].name, *where(settings))
    assert pushed.returncode == 1 and f"chmod 600 {loose}" in pushed.stderr, pushed.stderr
    assert s3_server.secret not in pushed.stdout + pushed.stderr
    os.chmod(loose, 0o600)
    pushed = ark_cli("backup", "push", kept[0].name, *where(settings))
    assert pushed.returncode == 0, pushed.stderr
    assert s3.Bucket(s3_server.remote(bucket)).copies()[0].name == kept[0].name


def test_a_key_names_no_file_outside_the_download_folder(tmp_path: Path, s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    store = s3.Bucket(s3_server.remote(bucket, prefix=""))
    into = tmp_path / "into"
    into.mkdir()
    for key in ("x/..", "x/.", "x/" + "n" * 300):  # "..": the folder above; 300 characters: no such file name
        s3_server.client().put_object(Bucket=bucket, Key=key, Body=b"hello")
        fetched = store.download(bucket, key, into)
        assert fetched.parent == into and fetched.read_bytes() == b"hello", key
        fetched.unlink()
    assert list(tmp_path.iterdir()) == [into] and list(into.iterdir()) == []


def test_a_copy_that_cannot_start_or_is_refused_says_why(tmp_path: Path) -> None:
    from botocore.exceptions import ClientError

    store = s3.Bucket(s3.Remote("b", secret=Secret("the-secret")))
    with pytest.raises(BackupError, match=r"cannot read .*No such file"):  # pruned meanwhile: a failed copy
        store.upload(tmp_path / archive.backup_name(1_800_000_000))
    error = {"Error": {"Code": "AuthorizationHeaderMalformed", "Message": "the region 'us-east-1' is wrong"}}
    refused = re.escape("check [backup] s3_region: the region 'us-east-1' is wrong")
    with pytest.raises(BackupError, match=refused), s3._mapped(store.remote, "cannot list"):
        raise ClientError(error, "ListObjectsV2")  # a store's answer to a request signed for another region


def test_an_s3_error_never_shows_the_secret(s3_server: S3Server) -> None:
    remote = s3_server.remote("no-such-bucket-here")
    with pytest.raises(BackupError, match="has no bucket 'no-such-bucket-here'") as caught:
        s3.Bucket(remote).copies()
    assert s3_server.secret not in str(caught.value)
    assert s3_server.secret not in repr(remote)  # a Remote shows Secret('**********')


def test_ark_up_copies_its_scheduled_backups_and_reports_a_failed_copy(tmp_path: Path, s3_server: S3Server) -> None:
    bucket = f"ark-{uuid.uuid4().hex[:12]}"  # made only later: the first copies fail
    secret = secret_file(tmp_path, s3_server.secret)
    config = f'master_key = "{MASTER_KEY}"\n[gateway]\nlisten = "127.0.0.1:{{PORT}}"\n' + s3_section(
        s3_server, bucket, secret, keep=1
    ).replace("[backup]\n", "[backup]\nevery_hours = 0.0003\nkeep = 2\nmedia = false\n")
    ark = start_ark(config, tmp_path)
    headers = {"Authorization": f"Bearer {MASTER_KEY}"}

    def reported() -> str:
        listed = httpx.get(ark.url + "/admin/services", headers=headers, timeout=5).json()["services"]
        return str(next((s["why"] for s in listed if s["name"] == "backup"), ""))

    def copied() -> bool:
        return ark.metric("ark_backup_last_upload_success_timestamp_seconds") > 0

    try:
        assert wait_until(lambda: "copy to S3 failed" in reported(), 60), reported()
        assert f"has no bucket '{bucket}'" in reported()
        assert archive.backups(ark.data_dir / "backups")  # the archive is kept
        assert ark.metric("ark_backup_last_success_timestamp_seconds") > 0 and not copied()
        s3_server.client().create_bucket(Bucket=bucket)
        assert wait_until(copied, 60), reported()
        assert wait_until(lambda: "copied to s3://" in reported(), 30), reported()
        assert wait_until(lambda: len(s3.Bucket(s3_server.remote(bucket)).copies()) == 1, 30)  # s3_keep = 1
    finally:
        stop_ark(ark)
    log = ark.log.read_text()
    assert "its copy to S3 failed" in log and s3_server.secret not in log


def test_an_uploaded_object_is_held_to_the_file_it_copies() -> None:
    good = {"ContentLength": 10, "ChecksumSHA256": "abc=-3", "Metadata": {"sha256": "f00"}}
    assert s3.mismatch(good, size=10, sha256="f00", checksum="abc=") == ""  # AWS's "-PARTS" suffix
    assert s3.mismatch({**good, "ChecksumSHA256": None}, size=10, sha256="f00", checksum="abc=") == ""  # none
    assert "holds 9 bytes" in s3.mismatch({**good, "ContentLength": 9}, size=10, sha256="f00", checksum="abc=")
    assert "store's checksum" in s3.mismatch(good, size=10, sha256="f00", checksum="xyz=")
    assert "recorded SHA-256" in s3.mismatch({**good, "Metadata": {}}, size=10, sha256="f00", checksum="abc=")
