"""`ark firewall`: apply with an automatic rollback, confirm, geo-block zones, the scanner blocklist."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.markup import escape

from ark.cli.common import Table, config_options, make_console, settings_or_exit
from ark.cli.edge import bundle_dir, out_option, render_with_progress
from ark.edge.apply import FirewallGuard
from ark.edge.blocklists import BlocklistStore
from ark.edge.persist import Persister, describe
from ark.errors import EdgeError

console = make_console()


@click.group()
def firewall() -> None:
    """The default-DROP firewall: apply (with automatic rollback), confirm, geo-blocking."""


@firewall.command("apply")
@config_options
@out_option
@click.option("--backend", type=click.Choice(["nft", "iptables"]), help="Default: [firewall] backend.")
@click.option("--netns", help="Apply inside this network namespace (ip netns exec NAME ...), e.g. for tests.")
def firewall_apply(
    config_path: Path | None, data_dir: Path | None, out: Path | None, backend: str | None, netns: str | None
) -> None:
    """Render the ruleset and load it atomically; unconfirmed, it is rolled back after confirm_s seconds.

    The previous rules are saved first and a detached watcher process restores them unless
    `ark firewall confirm` comes in time, so a rule that cuts your SSH session undoes itself.
    """
    settings = settings_or_exit(config_path, data_dir)
    target = bundle_dir(settings, out)
    render_with_progress(settings, target, only=["firewall"])
    chosen = backend or settings.firewall.backend
    pending = FirewallGuard(settings.data_dir).apply(target, chosen, settings.firewall.confirm_s, netns)
    where = f" in netns {netns}" if netns else ""
    console.print(f"[green]Applied[/] ({chosen}{where}): {', '.join(pending.applied)}")
    console.print(
        f"[bold]Run `ark firewall confirm` within {settings.firewall.confirm_s} s[/] "
        "(from a new SSH session, to prove you can still get in); otherwise the previous rules come back."
    )


@firewall.command("confirm")
@config_options
@click.option(
    "--persist-netns",
    is_flag=True,
    hidden=True,
    help="Persist an apply made with --netns too (for tests: the persist paths then point at test files).",
)
def firewall_confirm(config_path: Path | None, data_dir: Path | None, persist_netns: bool) -> None:
    """Keep the rules of the last apply (stops the rollback) and persist them for the next boot.

    With [firewall] persist (the default) the confirmed ruleset is written where Debian loads it at
    boot: /etc/nftables.conf (nftables.service), or /etc/iptables/ipsets, rules.v4 and rules.v6
    (netfilter-persistent); a file found there is kept once as PATH.ark-previous. An apply made
    with --netns is not persisted: the boot files are the host's.
    """
    settings = settings_or_exit(config_path, data_dir)
    guard = FirewallGuard(settings.data_dir)
    pending = guard.confirm()
    console.print(f"[green]Confirmed[/] ({pending.backend}): the rules stay.")
    if not settings.firewall.persist:
        console.print("[yellow]Not persisted[/] ([firewall] persist = false): a reboot loses these rules.")
        return
    if pending.netns and not persist_netns:
        console.print(
            f"[yellow]applied in namespace {escape(pending.netns)}: not persisted[/] (boot files are the host's)."
        )
        return
    try:
        written = Persister(guard, settings.firewall).persist(pending, netns_ok=persist_netns)
    except EdgeError as exc:
        raise click.ClickException(f"confirmed, but not persisted (a reboot loses these rules): {exc}") from None
    for path, previous in written:
        kept = f" (the file that was there: {escape(str(previous))})" if previous else ""
        console.print(f"[green]Persisted[/] {escape(str(path))}{kept}")
    if pending.backend == "nft":
        console.print("Loaded at boot by nftables.service once enabled: systemctl enable nftables")
    else:
        console.print(
            "Loaded at boot by netfilter-persistent.service: apt-get install iptables-persistent ipset-persistent"
        )


@firewall.command("rollback")
@config_options
def firewall_rollback(config_path: Path | None, data_dir: Path | None) -> None:
    """Restore the rules from before the last unconfirmed apply, now."""
    settings = settings_or_exit(config_path, data_dir)
    guard = FirewallGuard(settings.data_dir)
    guard.rollback_now()
    console.print(f"[green]Rolled back.[/] {escape(guard.last_event())}")


@firewall.command("status")
@config_options
def firewall_status(config_path: Path | None, data_dir: Path | None) -> None:
    """Whether an apply waits for confirmation, what happened last, whether the persisted rules match."""
    settings = settings_or_exit(config_path, data_dir)
    guard = FirewallGuard(settings.data_dir)
    pending = guard.pending()
    if pending:
        left = max(0.0, pending.deadline - time.time())
        console.print(f"[yellow]Waiting for confirmation[/]: rollback in {left:.0f} s ({pending.backend})")
    else:
        console.print("Nothing waiting for confirmation.")
    console.print(escape(guard.last_event()))
    for line in describe(Persister(guard, settings.firewall).status()):
        console.print(escape(line))


@firewall.group("geoblock")
def geoblock() -> None:
    """Geo-block zones: CIDR files whose addresses may not reach the gateway (or any public port)."""


@geoblock.command("add")
@config_options
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False, exists=True))
def geoblock_add(config_path: Path | None, data_dir: Path | None, files: tuple[Path, ...]) -> None:
    """Copy zone files (one CIDR per line, e.g. ipdeny's cn.zone) under DATA/firewall/geoblock/."""
    settings = settings_or_exit(config_path, data_dir)
    store = BlocklistStore(settings.data_dir)
    for path in files:
        name, count = store.add_zone(path)
        console.print(f"[green]OK[/] zone {name}: {count} networks")
    console.print("Load them with: ark firewall apply")


@geoblock.command("list")
@config_options
def geoblock_list(config_path: Path | None, data_dir: Path | None) -> None:
    """The zones and the scanner blocklist, with their sizes."""
    settings = settings_or_exit(config_path, data_dir)
    store = BlocklistStore(settings.data_dir)
    table = Table("zone", "networks")
    for name, count in store.zones().items():
        table.add_row(name, str(count))
    table.add_row("(scanner blocklist)", str(len(store.load().scanners)))
    console.print(table)


@geoblock.command("remove")
@config_options
@click.argument("name")
def geoblock_remove(config_path: Path | None, data_dir: Path | None, name: str) -> None:
    """Forget a zone (apply again to unload it)."""
    settings = settings_or_exit(config_path, data_dir)
    BlocklistStore(settings.data_dir).remove_zone(name)
    console.print(f"[green]OK[/] removed zone {name}")


@firewall.command("block")
@config_options
@click.argument("networks", nargs=-1, required=True)
def firewall_block(config_path: Path | None, data_dir: Path | None, networks: tuple[str, ...]) -> None:
    """Add addresses or networks to the scanner blocklist (dropped on every port)."""
    settings = settings_or_exit(config_path, data_dir)
    count = BlocklistStore(settings.data_dir).block(list(networks))
    console.print(f"[green]OK[/] the blocklist holds {count} networks; load it with: ark firewall apply")


@firewall.command("unblock")
@config_options
@click.argument("networks", nargs=-1, required=True)
def firewall_unblock(config_path: Path | None, data_dir: Path | None, networks: tuple[str, ...]) -> None:
    """Remove addresses or networks from the scanner blocklist."""
    settings = settings_or_exit(config_path, data_dir)
    count = BlocklistStore(settings.data_dir).unblock(list(networks))
    console.print(f"[green]OK[/] the blocklist holds {count} networks; load it with: ark firewall apply")
