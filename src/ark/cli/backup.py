"""`ark backup` and `ark restore`: one archive with ARK's database, config, secrets and data, and back.

A backup is online: the gateway keeps serving while it is made (SQLite's backup API, or pg_dump in one
snapshot); it runs at low CPU priority. A restore goes into an empty data directory only, and only once the
whole archive checks out (docs/backup.md).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from ark.backup import archive, s3
from ark.backup.crypto import BackupError, check_passphrase
from ark.cli.common import Table, config_options, make_console, print_json, settings_or_exit
from ark.config import Settings
from ark.engines.pull import transfer_bar

console = make_console()
status = make_console(stderr=True)  # progress: not the command's output (--json stays parseable)


def read_passphrase(passphrase_file: Path | None, from_stdin: bool) -> str | None:
    """The passphrase from a file (its first line) or standard input; None without either."""
    if passphrase_file is not None and from_stdin:
        raise click.UsageError("give the passphrase one way: --passphrase-file or --passphrase-stdin")
    try:
        if passphrase_file is not None:
            text = passphrase_file.read_text(encoding="utf-8")
        elif from_stdin:
            text = sys.stdin.read(4096)
        else:
            return None
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"cannot read the passphrase: {exc}") from None
    lines = text.splitlines()
    return lines[0] if lines else ""


def _lower_priority() -> None:
    """A backup yields the CPU to the gateway serving beside it."""
    with contextlib.suppress(OSError):
        os.nice(10)


def _stop_cleanly() -> None:
    """SIGTERM (systemd stopping the unit, a timeout) ends the command like Ctrl-C does: its temporary
    folders (a database copy, unsealed secrets) are removed on the way out."""
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))


passphrase_options = (
    click.option(
        "--passphrase-file",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        help="Seal the secrets with the passphrase in this file (first line; 12 characters or more).",
    ),
    click.option("--passphrase-stdin", is_flag=True, help="Read that passphrase from standard input."),
)


@click.group(invoke_without_command=True)
@config_options
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder for the archive (default: [backup] dir, DATA/backups).",
)
@click.option("--without-media", is_flag=True, help="Leave out generated images, recordings and renders.")
@passphrase_options[0]
@passphrase_options[1]
@click.option("--no-upload", is_flag=True, help="Keep the archive here only, even with [backup] s3_bucket set.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.pass_context
def backup(
    ctx: click.Context,
    config_path: Path | None,
    data_dir: Path | None,
    out: Path | None,
    without_media: bool,
    passphrase_file: Path | None,
    passphrase_stdin: bool,
    no_upload: bool,
    as_json: bool,
) -> None:
    """Back up ARK (database, config, secrets, data) into one archive, while it runs.

    The secrets (the config file, DATA/auth.key, service keys, WireGuard's and certbot's keys) are sealed
    with a passphrase when one is given; without one they are kept as they are, in an archive only its
    owner can read. With [backup] s3_bucket set, the archive is then copied to that S3 store; a copy that
    fails keeps the archive and exits 1. `ark backup verify ARCHIVE` checks an archive; `ark restore` puts
    one back.
    """
    if ctx.invoked_subcommand is not None:
        return
    settings = settings_or_exit(config_path, data_dir)
    passphrase = read_passphrase(passphrase_file, passphrase_stdin)
    if passphrase is not None:
        check_passphrase(passphrase)  # before the work, not after it
    _lower_priority()
    _stop_cleanly()
    folder = out or settings.backups_dir
    with transfer_bar(status) as bar:
        task = bar.add_task("backing up", total=None)
        made = archive.create(
            settings, folder, passphrase=passphrase, media=not without_media, progress=lambda n: bar.advance(task, n)
        )
    pruned = archive.prune(folder, settings.backup.keep, spare=made.path) if out is None else []
    pushed, failed = (None, "") if no_upload else _copy_to_s3(settings, made.path)
    if as_json:
        copied: dict[str, Any] | None = None
        if pushed is not None:
            copied = {"url": pushed.copy.url, "size": pushed.copy.size, "pruned": [c.url for c in pushed.pruned]}
        elif failed:
            copied = {"error": failed}
        print_json(
            {"archive": str(made.path), "manifest": made.manifest, "pruned": [str(p) for p in pruned], "s3": copied}
        )
        _fail_on_copy(made.path, failed, pushed)
        return
    counts = made.manifest["database"]["counts"]
    size = made.path.stat().st_size
    console.print(f"Backup: {made.path}")
    console.print(
        f"  {size / 2**20:.1f} MiB in {made.seconds:.1f} s; {len(made.manifest['files'])} files; "
        + ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in counts.items())
    )
    if passphrase is None:
        console.print("  [yellow]The secrets are not sealed: keep this archive where only you can read it.[/]")
    for path in pruned:
        console.print(f"  removed the older backup {path}")
    if pushed is not None:
        console.print(f"  copied to {pushed.copy.url}")
        for copy in pushed.pruned:
            console.print(f"  removed the older copy {copy.url}")
    _fail_on_copy(made.path, failed, pushed)


def _copy_to_s3(settings: Settings, path: Path) -> tuple[s3.Pushed | None, str]:
    """Copy a new archive to ``[backup] s3_bucket`` (nothing without one): what was done, or why it failed."""
    try:
        bucket = s3.open_bucket(settings)
        if bucket is None:
            return None, ""
        with transfer_bar(status) as bar:
            task = bar.add_task("copying to S3", total=path.stat().st_size)
            return s3.push(bucket, path, progress=lambda n: bar.advance(task, n)), ""
    except BackupError as exc:
        return None, str(exc)


def _fail_on_copy(path: Path, failed: str, pushed: s3.Pushed | None) -> None:
    """Exit 1 when the copy (or the bucket's pruning) failed: the archive itself is made and kept."""
    if failed:
        raise click.ClickException(f"the backup {path} is made and kept, but its copy to S3 failed: {failed}")
    if pushed is not None and pushed.prune_failed:
        raise click.ClickException(
            f"the backup is copied to {pushed.copy.url}, but older copies could not be deleted: {pushed.prune_failed}"
        )


@backup.command("verify")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@passphrase_options[0]
@passphrase_options[1]
def backup_verify(path: Path, passphrase_file: Path | None, passphrase_stdin: bool) -> None:
    """Check an archive whole: every file against its checksum, the sealed secrets, the database."""
    passphrase = read_passphrase(passphrase_file, passphrase_stdin)
    _stop_cleanly()
    # unpacked in a private folder of its own ($TMPDIR), removed however the check ends: never beside the
    # archives, where it would fill the backups folder and could be taken for one of them
    with tempfile.TemporaryDirectory(prefix="ark-verify-") as work:
        staged = archive.stage(path, Path(work), passphrase)
        manifest = staged.manifest
    sealed = manifest["secrets"]["sealed"]
    console.print(f"{path}: good. Made {manifest['created_at']} by ARK {manifest['ark_version']}.")
    counts = manifest["database"]["counts"]
    console.print(
        f"  {manifest['database']['kind']} database, schema {manifest['database']['schema']}: "
        + ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in counts.items())
    )
    console.print(f"  secrets {'sealed and unsealed with the passphrase' if sealed else 'not sealed'}")


@backup.command("list")
@config_options
@click.option("--remote", is_flag=True, help="List the copies in the S3 store ([backup] s3_bucket) instead.")
def backup_list(config_path: Path | None, data_dir: Path | None, remote: bool) -> None:
    """The archives in the backup folder (or the S3 store), newest last."""
    settings = settings_or_exit(config_path, data_dir)
    if remote:
        bucket = _bucket(settings)
        copies = bucket.copies()
        if not copies:
            console.print(f"No backups in {bucket.remote.url(bucket.remote.key(''))}.")
            return
        listed = Table("archive", "size")
        for copy in copies:
            listed.add_row(copy.url, f"{copy.size / 2**20:.1f} MiB")
        console.print(listed)
        return
    found = archive.backups(settings.backups_dir)
    if not found:
        console.print(f"No backups in {settings.backups_dir}.")
        return
    table = Table("archive", "size")
    for path in found:
        table.add_row(str(path), f"{path.stat().st_size / 2**20:.1f} MiB")
    console.print(table)


@backup.command("push")
@click.argument("name", metavar="ARCHIVE")
@config_options
def backup_push(name: str, config_path: Path | None, data_dir: Path | None) -> None:
    """Copy an archive to the S3 store ([backup] s3_bucket): a path, or the name of one in the backups folder.

    The bucket is not pruned: that happens after each new backup.
    """
    settings = settings_or_exit(config_path, data_dir)
    path = Path(name).expanduser()
    if not path.is_file():
        path = settings.backups_dir / name
    if not path.is_file():
        raise click.ClickException(f"{name}: no such archive (nor in {settings.backups_dir})")
    if not archive.is_backup_name(path.name):
        raise click.ClickException(f"{path.name}: only archives named as `ark backup` names them are copied")
    bucket = _bucket(settings)
    with transfer_bar(status) as bar:
        task = bar.add_task("copying to S3", total=path.stat().st_size)
        copy = bucket.upload(path, progress=lambda n: bar.advance(task, n))
    console.print(f"Copied {path} to {copy.url}")


def _bucket(settings: Settings) -> s3.Bucket:
    bucket = s3.open_bucket(settings)
    if bucket is None:
        raise click.ClickException("no S3 store: set [backup] s3_bucket (docs/backup.md)")
    return bucket


@click.command()
@click.argument("source", metavar="ARCHIVE")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="The data directory to restore into: absent or empty.",
)
@click.option(
    "--config-to",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where the backed-up config file goes (default: DATA/ark.toml).",
)
@click.option(
    "--store-url",
    default="",
    help="For a PostgreSQL backup: the empty database to restore into (default: the backed-up config's).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="For an archive in S3: the ark.toml whose [backup] s3_* settings reach the store (default: $ARK_CONFIG).",
)
@passphrase_options[0]
@passphrase_options[1]
def restore(
    source: str,
    data_dir: Path,
    config_to: Path | None,
    store_url: str,
    config_path: Path | None,
    passphrase_file: Path | None,
    passphrase_stdin: bool,
) -> None:
    """Restore a backup into an empty data directory, then check it against the archive's counts.

    ARCHIVE is a file, s3://BUCKET/KEY, or the name of a copy in the S3 store ([backup] s3_bucket), which is
    downloaded beside the data directory first. Nothing is written until the whole archive checks out
    (every file's checksum, the sealed secrets, the database's integrity): a damaged archive or a wrong
    passphrase leaves everything as it was.
    """
    passphrase = read_passphrase(passphrase_file, passphrase_stdin)
    data_dir = data_dir.expanduser().absolute()
    _stop_cleanly()
    with _fetched(source, config_path, data_dir.parent) as path:
        staged = archive.stage(path, data_dir.parent, passphrase)
    try:
        manifest = staged.manifest
        if manifest["database"]["kind"] == "postgresql" and not store_url:
            store_url = _store_url_of(staged)
        config = archive.install(staged, data_dir, config_to=config_to, store_url=store_url)
    finally:
        staged.discard()
    expected = manifest["database"]["counts"]
    found = archive.restored_counts(data_dir, store_url)
    table = Table("rows", "in the backup", "restored")
    for name, count in expected.items():
        table.add_row(name.replace("_", " "), str(count), str(found.get(name, 0)))
    console.print(f"Restored {source} into {data_dir}" + (f"; its config is {config}" if config else ""))
    console.print(table)
    if any(found.get(name, 0) != count for name, count in expected.items()):
        raise click.ClickException("the restored database does not hold what the backup says it holds")
    url = _config_value(config, "store", "url") if config else None
    if manifest["database"]["kind"] == "sqlite" and isinstance(url, str) and url.startswith("sqlite"):
        console.print(
            f"[yellow]The config names the database {url!r}; the restored one is {data_dir / 'ark.db'}: move it "
            "there or edit [store] url before starting ARK.[/]"
        )
    named = _config_value(config, "data_dir") if config else None
    if isinstance(named, str) and Path(named).expanduser().absolute() != data_dir:
        console.print(
            f"[yellow]The config names data_dir = {named!r}: start ARK with --data-dir {data_dir} or edit it.[/]"
        )
    bucket = _config_value(config, "backup", "s3_bucket") if config else None
    if config and isinstance(bucket, str) and bucket.strip():
        # copies are named by time only: two ARKs copying to one place prune each other's
        prefix = _config_value(config, "backup", "s3_prefix")
        prefix = prefix.strip("/ ") if isinstance(prefix, str) else ""
        where = f"s3://{bucket.strip()}/" + (f"{prefix}/" if prefix else "")
        console.print(
            f"[yellow]The config copies backups to {escape(where)} and deletes older copies there: while the box it "
            "came from still runs, give this one its own \\[backup] s3_prefix before starting ARK.[/]"
        )


@contextlib.contextmanager
def _fetched(source: str, config_path: Path | None, beside: Path) -> Iterator[Path]:
    """The archive to restore as a local file: ``source`` itself, or its copy in the S3 store downloaded
    into a private folder in ``beside`` (checked against the SHA-256 it was uploaded with; removed after)."""
    where = s3.location(source)
    local = Path(source).expanduser()
    if where is None and (local.exists() or not archive.is_backup_name(source)):
        yield local
        return
    bucket = s3.open_bucket(settings_or_exit(config_path, None))
    if bucket is None:
        raise click.ClickException(f"{source}: no such file, and no S3 store to fetch it from ([backup] s3_bucket)")
    bucket_name, key = where or (bucket.remote.bucket, bucket.remote.key(source))
    beside.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=beside, prefix=".ark-download-") as work:
        with transfer_bar(status) as bar:
            task = bar.add_task("downloading", total=None)
            path = bucket.download(bucket_name, key, Path(work), progress=lambda n: bar.advance(task, n))
        yield path


def _config_value(config: Path, *keys: str) -> object:
    """A value of a TOML config file by its keys; None when absent or unreadable."""
    try:
        value: object = tomllib.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _store_url_of(staged: archive.Staged) -> str:
    """[store] url of the backed-up config, for a PostgreSQL backup restored without --store-url."""
    config = archive.staged_config(staged)
    url = _config_value(config, "store", "url") if config else None
    return url if isinstance(url, str) else ""


__all__ = ["BackupError", "backup", "restore"]
