"""`ark peers`: WireGuard peers, each with its keys, its address and its file (and QR code)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from ark.cli.common import Table, config_options, make_console, print_json, qr_text, settings_or_exit
from ark.cli.edge import bundle_dir, out_option, print_pruned, render_with_progress
from ark.config import Settings
from ark.edge.wireguard import PeerStore, endpoint

console = make_console()


@click.group()
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
        print_json(rows)
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
