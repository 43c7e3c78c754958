"""`ark render`, `ark certs`, `ark peers`, `ark audit` (and, from cli_firewall, `ark firewall`).

Registered on the main group by one import at the end of ark/cli.py.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import orjson
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn

from ark.cli import main
from ark.cli_common import ConfigProblem, Table, config_options, make_console, qr_text, settings_or_exit
from ark.config import Settings
from ark.edge.acme import Acme, AcmeResult, Reporter
from ark.edge.certs import certbot_live
from ark.edge.files import WriteResult
from ark.edge.render import RENDERERS, default_out, make_context, render_bundle
from ark.edge.wireguard import PeerStore, endpoint
from ark.errors import ConfigError, EdgeError

console = make_console()
out_option = click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="The bundle directory (default: DATA/deploy).",
)


@contextmanager
def edge_errors() -> Iterator[None]:
    """The edge's errors become CLI errors (exit 1); configuration errors, bad-configuration ones (exit 2)."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from None
    except EdgeError as exc:
        raise click.ClickException(str(exc)) from None


def bundle_dir(settings: Settings, out: Path | None) -> Path:
    return (out or default_out(settings)).absolute()


def render_with_progress(
    settings: Settings, out: Path, tls: str | None = None, only: list[str] | None = None
) -> WriteResult:
    """Run the renderers with a spinner per step (certificates and hashes take a moment)."""
    with edge_errors():
        ctx = make_context(settings, out, tls)
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=console, transient=True) as progress:
            task = progress.add_task("rendering", total=None)
            return render_bundle(ctx, only, lambda name: progress.update(task, description=f"rendering {name}"))


def print_result(result: WriteResult, out: Path) -> None:
    counts = f"{len(result.changed)} changed, {len(result.unchanged)} unchanged"
    if result.removed:
        counts += f", {len(result.removed)} removed"
    if result.stale:
        counts += f", {len(result.stale)} kept as .ark-stale"
    console.print(f"[green]OK[/] {escape(str(out))}: {counts}")
    for path in result.changed:
        console.print(f"  [bold]wrote[/] {escape(path)}")
    print_pruned(result)
    for note in result.notes:
        console.print(f"  [yellow]note[/] {escape(note)}")


def print_pruned(result: WriteResult) -> None:
    """What the render took away: files it no longer produces, and edited ones it set aside."""
    for path in result.removed:
        console.print(f"  [bold]removed[/] {escape(path)} (no longer rendered)")
    for path, kept in result.stale:
        console.print(
            f"  [yellow]kept[/] {escape(path)} as {escape(kept)}: no longer rendered, but edited since ARK wrote it"
        )


@main.command()
@config_options
@out_option
@click.option(
    "--tls",
    type=click.Choice(["letsencrypt", "self-signed"]),
    help="Certificates: certbot's paths, or a local CA made inside the bundle (default: [edge] tls).",
)
@click.option(
    "--only",
    multiple=True,
    type=click.Choice([name for name, _ in RENDERERS]),
    help="Render only this part (repeatable).",
)
def render(
    config_path: Path | None, data_dir: Path | None, out: Path | None, tls: str | None, only: tuple[str, ...]
) -> None:
    """Write the edge bundle (nginx/, wireguard/, firewall/, certs/) from the config.

    Files whose content would not change are left untouched. Files an earlier render wrote
    and this one no longer produces are removed (OUT/.ark-manifest.json lists what ARK
    wrote; with --only, within those parts); one edited since is kept as FILE.ark-stale.
    Check the result with `nginx -t -c OUT/nginx/nginx.conf` and
    `nft -c -f OUT/firewall/ruleset.nft`.
    """
    settings = settings_or_exit(config_path, data_dir)
    target = bundle_dir(settings, out)
    print_result(render_with_progress(settings, target, tls, list(only) or None), target)


@main.group()
def certs() -> None:
    """TLS certificates for the sites."""


@certs.command("self-signed")
@config_options
@out_option
def certs_self_signed(config_path: Path | None, data_dir: Path | None, out: Path | None) -> None:
    """Make a local CA (limited to [edge] domain) and one certificate per site name, in OUT/certs/.

    Existing ones are kept while they have more than 30 days left. Trust OUT/certs/ca.pem on
    the machines that should accept them.
    """
    settings = settings_or_exit(config_path, data_dir)
    target = bundle_dir(settings, out)
    result = render_with_progress(settings, target, "self-signed", ["certs"])
    print_result(result, target)
    console.print(f"CA certificate: {escape(str(target / 'certs' / 'ca.pem'))}")


class RichReporter(Reporter):
    """A spinner for the step under way; a line for each step that ended."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = progress.add_task("starting", total=None)

    def step(self, text: str) -> None:
        self.progress.update(self.task, description=escape(text))

    def outcome(self, text: str, ok: bool = True) -> None:
        mark = "[green]ok[/]" if ok else "[red]failed[/]"
        self.progress.console.print(f"  {mark} {escape(text)}", soft_wrap=True)


@contextmanager
def reporter() -> Iterator[Reporter]:
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=console, transient=True) as progress:
        yield RichReporter(progress)


def print_acme(result: AcmeResult) -> None:
    if result.render is not None:
        for path in result.render.changed:
            console.print(f"  [bold]wrote[/] {escape(path)}")
        print_pruned(result.render)
    for note in result.notes:
        console.print(f"  [yellow]note[/] {escape(note)}")


reload_option = click.option(
    "--reload/--no-reload",
    default=True,
    show_default=True,
    help="Reload Nginx once `nginx -t` passes (skipped when it is not running).",
)


@certs.command("letsencrypt")
@config_options
@out_option
@reload_option
@click.option(
    "--check/--no-check",
    default=True,
    show_default=True,
    help="First check that the running Nginx serves the webroot for every name.",
)
def certs_letsencrypt(
    config_path: Path | None, data_dir: Path | None, out: Path | None, reload: bool, check: bool
) -> None:
    """Obtain a Let's Encrypt certificate for every site name (certbot, HTTP-01 webroot OUT/acme).

    certbot keeps its state in DATA/certbot ([edge] acme_directory, contact [edge] email);
    certificates that are not due are kept. Nginx must already serve the webroot on port 80:
    the first time, `ark render --tls self-signed` and start it. Then renders the sites for
    these certificates, runs `nginx -t` and, only if it passes, reloads Nginx.
    """
    settings = settings_or_exit(config_path, data_dir)
    target = bundle_dir(settings, out)
    with edge_errors(), reporter() as report:
        result = Acme(settings, target).obtain(check=check, reload=reload, report=report)
    console.print(f"[green]OK[/] {len(result.names)} certificates in {escape(str(settings.data_dir / 'certbot'))}")
    print_acme(result)


@certs.command("renew")
@config_options
@out_option
@reload_option
@click.option("--force", is_flag=True, help="Renew every certificate now, not only those due (30 days left).")
def certs_renew(config_path: Path | None, data_dir: Path | None, out: Path | None, reload: bool, force: bool) -> None:
    """Renew the certificates `ark certs letsencrypt` obtained that are due; reload Nginx if any was.

    Run it from a timer or cron twice a day (docs/security.md): certbot renews 30 days before expiry.
    """
    settings = settings_or_exit(config_path, data_dir)
    target = bundle_dir(settings, out)
    with edge_errors(), reporter() as report:
        result = Acme(settings, target).renew(force=force, reload=reload, report=report)
    renewed = ", ".join(result.names) if result.names else "none due"
    console.print(f"[green]OK[/] renewed: {escape(renewed)}")
    print_acme(result)


# -- peers ----------------------------------------------------------------------------------------


@main.group()
def peers() -> None:
    """WireGuard peers: phones and laptops that reach the VPN-only services."""


def _store(settings: Settings) -> PeerStore:
    return PeerStore(settings.data_dir, settings.wireguard.subnet)


def _show_peer(settings: Settings, out: Path, name: str, qr: bool) -> None:
    path = out / "wireguard" / "peers" / f"{name}.conf"
    if qr:
        console.print(qr_text(path.read_text()), markup=False, highlight=False)
    console.print(f"Peer file (secret, 0600): [bold]{escape(str(path))}[/]")


@peers.command("add")
@config_options
@out_option
@click.argument("name")
@click.option("--ip", "address", help="The peer's address in the VPN subnet (default: the first free one).")
@click.option("--qr/--no-qr", default=True, show_default=True, help="Print the peer file as a QR code.")
def peers_add(
    config_path: Path | None, data_dir: Path | None, out: Path | None, name: str, address: str | None, qr: bool
) -> None:
    """Add a peer: new keys, an address, its file (and QR code), and the server's file updated."""
    settings = settings_or_exit(config_path, data_dir)
    target = bundle_dir(settings, out)
    with edge_errors():
        endpoint(settings)  # before the peer is stored: its file needs somewhere to connect to
        peer = _store(settings).add(name, address)
    render_with_progress(settings, target, only=["wireguard"])
    console.print(f"[green]OK[/] peer [bold]{peer.name}[/] at {peer.address}, public key {peer.public_key}")
    _show_peer(settings, target, name, qr)
    _reload_hint(settings, target)


@peers.command("list")
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON (public keys only).")
def peers_list(config_path: Path | None, data_dir: Path | None, as_json: bool) -> None:
    """Every peer: name, address, public key."""
    settings = settings_or_exit(config_path, data_dir)
    rows = [
        {"name": p.name, "address": p.address, "public_key": p.public_key, "created": p.created}
        for p in _store(settings).peers()
    ]
    if as_json:
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table("name", "address", "public key", "created")
    for row in rows:
        table.add_row(row["name"], row["address"], row["public_key"], row["created"])
    console.print(table)


@peers.command("show")
@config_options
@out_option
@click.argument("name")
@click.option("--qr/--no-qr", default=True, show_default=True, help="Print the peer file as a QR code.")
def peers_show(config_path: Path | None, data_dir: Path | None, out: Path | None, name: str, qr: bool) -> None:
    """The peer's file and its QR code (scan it with the WireGuard app)."""
    settings = settings_or_exit(config_path, data_dir)
    target = bundle_dir(settings, out)
    with edge_errors():
        _store(settings).get(name)
    render_with_progress(settings, target, only=["wireguard"])
    _show_peer(settings, target, name, qr)


@peers.command("remove")
@config_options
@out_option
@click.argument("name")
def peers_remove(config_path: Path | None, data_dir: Path | None, out: Path | None, name: str) -> None:
    """Remove a peer: its keys are deleted and the server's file no longer lists it."""
    settings = settings_or_exit(config_path, data_dir)
    target = bundle_dir(settings, out)
    with edge_errors():
        peer = _store(settings).remove(name)
    # the file holds the peer's private key: it goes even when edited (pruning would keep that as .ark-stale)
    (target / "wireguard" / "peers" / f"{name}.conf").unlink(missing_ok=True)
    result = render_with_progress(settings, target, only=["wireguard"])
    console.print(f"[green]OK[/] removed {peer.name} ({peer.address})")
    print_pruned(result)
    _reload_hint(settings, target)


def _reload_hint(settings: Settings, out: Path) -> None:
    iface = settings.wireguard.interface
    command = f"wg syncconf {iface} <(wg-quick strip {out / 'wireguard' / f'{iface}.conf'})"
    console.print(f"Apply on the server: {escape(command)}")


# -- audit ----------------------------------------------------------------------------------------


@main.command()
@config_options
@out_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def audit(config_path: Path | None, data_dir: Path | None, out: Path | None, as_json: bool) -> None:
    """Check what this machine exposes against the port map; exit 1 when something is wrong.

    Listening sockets (public where they should be loopback, ports nobody declared), the
    firewall, services answering without credentials, certificates expiring soon.
    """
    from ark.edge.audit import Auditor

    settings = settings_or_exit(config_path, data_dir)
    with edge_errors():
        report = Auditor(settings, bundle_dir(settings, out), letsencrypt=certbot_live(settings.data_dir)).run()
    if as_json:
        click.echo(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        table = Table("severity", "check", "where", "what")
        for p in report.problems:
            colour = "red" if p.severity == "error" else "yellow"
            table.add_row(f"[{colour}]{p.severity}[/]", p.check, escape(p.subject), escape(p.detail))
        if report.problems:
            console.print(table)
        verdict = "[green]OK[/]" if report.ok else "[red]PROBLEMS[/]"
        console.print(
            f"{verdict} {len(report.sockets)} listening sockets, {len(report.certificates)} certificates checked"
        )
    if not report.ok:
        sys.exit(1)


import ark.cli_firewall  # noqa: E402, F401 - registers `ark firewall`
