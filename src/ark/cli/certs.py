"""`ark certs`: TLS certificates for the sites, self-signed or from Let's Encrypt."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn

from ark.cli.common import config_options, make_console, settings_or_exit
from ark.cli.edge import bundle_dir, out_option, print_pruned, print_result, render_with_progress
from ark.edge.acme import Acme, AcmeResult, Reporter

console = make_console()


@click.group()
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
    with reporter() as report:
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
    with reporter() as report:
        result = Acme(settings, target).renew(force=force, reload=reload, report=report)
    renewed = ", ".join(result.names) if result.names else "none due"
    console.print(f"[green]OK[/] renewed: {escape(renewed)}")
    print_acme(result)


# -- peers ----------------------------------------------------------------------------------------
