"""`ark render`: every renderer's files, written into one bundle directory.

A renderer takes a :class:`RenderContext` and returns :data:`~ark.edge.files.Files`; it
never writes (the store of WireGuard keys is the one exception: a server key is made
once, on first use). Later subsystems (monitoring, deploy) add themselves to
:data:`RENDERERS`. Writing goes through :func:`~ark.edge.files.write_tracked`, which leaves
unchanged files untouched and removes the files an earlier render of the same renderers
wrote that this one no longer produces (a site turned off, a peer removed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ark.config import Settings
from ark.deploy import units
from ark.edge.blocklists import BlocklistStore
from ark.edge.certs import certbot_commands, self_signed_files
from ark.edge.files import Files, FileSpec, WriteResult, read_existing, write_tracked
from ark.edge.firewall import firewall_plan, render_firewall
from ark.edge.nginx import render_nginx
from ark.edge.ports import PortMap, port_map
from ark.edge.sites import edge_sites
from ark.edge.wireguard import render_wireguard
from ark.errors import EdgeError
from ark.monitor import grafana, prometheus


@dataclass(frozen=True)
class RenderContext:
    settings: Settings
    out: Path  # absolute: rendered files name each other by absolute path
    tls: str  # "letsencrypt" or "self-signed"
    ports: PortMap

    def existing(self, relative: str) -> bytes | None:
        """What a renderer wrote there last time (to keep what is still good: keys, hashes)."""
        return read_existing(self.out, relative)


Renderer = Callable[[RenderContext], Files]


def _certs(ctx: RenderContext) -> Files:
    names = [site.host for site in edge_sites(ctx.settings, ctx.ports)]
    if ctx.tls == "self-signed":
        return self_signed_files(ctx.settings.edge.domain, names, ctx.existing)
    script = certbot_commands(names, ctx.settings.edge.email, ctx.out / "acme")
    return {"certs/certbot.sh": FileSpec.text(script, 0o755)}


def _nginx(ctx: RenderContext) -> Files:
    sites = edge_sites(ctx.settings, ctx.ports)
    return render_nginx(ctx.settings, sites, ctx.out, ctx.tls, ctx.existing)


def _wireguard(ctx: RenderContext) -> Files:
    return render_wireguard(ctx.settings, ctx.settings.data_dir)


def _firewall(ctx: RenderContext) -> Files:
    lists = BlocklistStore(ctx.settings.data_dir).load()
    return render_firewall(firewall_plan(ctx.settings, ctx.ports, lists))


def _monitoring(ctx: RenderContext) -> Files:
    files = {**prometheus.render(ctx.settings), **grafana.render(ctx.settings)}
    return {name: FileSpec.text(text) for name, text in files.items()}


def _systemd(ctx: RenderContext) -> Files:
    return {name: FileSpec.text(text) for name, text in units.render(ctx.settings, ctx.out).items()}


def _compose(ctx: RenderContext) -> Files:
    from ark.deploy import compose  # here: it reads the services' own settings code, which imports the runtime

    return {name: FileSpec.text(text) for name, text in compose.render(ctx.settings, ctx.out).items()}


def _readme(ctx: RenderContext) -> Files:
    from ark.deploy import compose

    return {compose.README: FileSpec.text(compose.readme(ctx.settings, ctx.out))}


# name -> renderer, in the order they run
RENDERERS: tuple[tuple[str, Renderer], ...] = (
    ("certs", _certs),
    ("nginx", _nginx),
    ("wireguard", _wireguard),
    ("firewall", _firewall),
    ("monitoring", _monitoring),
    ("systemd", _systemd),
    ("compose", _compose),
    ("readme", _readme),
)


def default_out(settings: Settings) -> Path:
    """Where the bundle goes unless --out says otherwise: DATA/deploy."""
    return settings.data_dir / "deploy"


def make_context(settings: Settings, out: Path, tls: str | None = None) -> RenderContext:
    return RenderContext(settings, out.absolute(), tls or settings.edge.tls, port_map(settings))


def render_parts(
    ctx: RenderContext, only: Iterable[str] | None = None, progress: Callable[[str], None] | None = None
) -> dict[str, Files]:
    """Run the renderers (all, or those named): each one's files, by renderer name."""
    wanted = set(only) if only is not None else None
    unknown = (wanted or set()) - {name for name, _ in RENDERERS}
    if unknown:
        raise EdgeError(
            f"unknown renderer(s): {', '.join(sorted(unknown))}; known: {', '.join(n for n, _ in RENDERERS)}"
        )
    parts: dict[str, Files] = {}
    for name, renderer in RENDERERS:
        if wanted is not None and name not in wanted:
            continue
        if progress:
            progress(name)
        parts[name] = renderer(ctx)
    return parts


def render_files(
    ctx: RenderContext, only: Iterable[str] | None = None, progress: Callable[[str], None] | None = None
) -> Files:
    """Run the renderers (all, or those named) and collect their files."""
    return {path: spec for files in render_parts(ctx, only, progress).values() for path, spec in files.items()}


def render_bundle(
    ctx: RenderContext, only: Iterable[str] | None = None, progress: Callable[[str], None] | None = None
) -> WriteResult:
    """Render and write; files whose content is unchanged keep their mtime.

    Only after every renderer succeeded is anything written; then the files the last render of
    these renderers wrote and this one did not are removed (see :func:`~ark.edge.files.write_tracked`).
    """
    parts = render_parts(ctx, only, progress)
    return write_tracked(ctx.out, parts, None if only is None else set(parts))
