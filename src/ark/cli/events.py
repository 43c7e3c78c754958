"""`ark events`: ARK's webhooks: a signing secret, a sample delivery, what waits and what died, redelivery."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import click
import orjson
from rich.markup import escape

from ark.cli.common import Table, call_gateway, config_options, make_console, print_json, settings_or_exit
from ark.events import signing

console = make_console()


@click.group()
def events() -> None:
    """ARK's events as signed webhooks (docs/automation.md)."""


@events.command("secret")
def events_secret() -> None:
    """Print a new signing secret for a [webhooks.NAME] table (whsec_...)."""
    console.print(signing.new_secret())


@events.command("test")
@click.argument("url")
@config_options
@click.option("--secret", help="Sign with this secret (whsec_...); default: that of the [webhooks] table with URL.")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait for the receiver.")
def events_test(url: str, config_path: Path | None, data_dir: Path | None, secret: str | None, timeout: float) -> None:
    """Send a sample event (ark.test) to URL, signed as every delivery is, and show the answer."""
    if secret is None:
        settings = settings_or_exit(config_path, data_dir)
        secret = next((w.secret.value for w in settings.webhooks if w.url.rstrip("/") == url.rstrip("/")), None)
        if secret is None:
            raise click.UsageError(f"no [webhooks] table has url = {url!r}: pass --secret")
    try:
        signing.signature(secret, "msg_check", 0, b"")
    except ValueError:  # binascii.Error: not base64
        secret = ""
    if not secret.startswith("whsec_"):
        raise click.UsageError("--secret: expected a Standard Webhooks secret (whsec_ and base64)")
    event = {"type": "ark.test", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "data": {}}
    body, msg_id = orjson.dumps(event), "msg_" + uuid.uuid4().hex
    headers = signing.headers(secret, msg_id, int(time.time()), body, "ark.test")
    if not url.startswith(("http://", "https://")):
        raise click.UsageError(f"{url!r}: expected an http(s) URL")
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 - http(s) only
    # as real deliveries are sent: no proxy from the environment, no redirect followed (a 3xx is a failure)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())
    try:
        with opener.open(request, timeout=timeout) as reply:
            status, reason = reply.status, reply.reason
    except urllib.error.HTTPError as exc:
        status, reason = exc.code, exc.reason
    except (urllib.error.URLError, OSError) as exc:
        raise click.ClickException(f"{url}: {getattr(exc, 'reason', exc)}") from None
    line = f"{status} {reason} from {url} (webhook-id {msg_id})"
    if not 200 <= status < 300:
        raise click.ClickException(line)
    console.print(f"[green]delivered[/] {escape(line)}")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # urllib then raises HTTPError with the 3xx itself


@events.command("status")
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
def events_status(config_path: Path | None, data_dir: Path | None, as_json: bool) -> None:
    """Deliveries per webhook (pending, delivered, dead) and the dead letters, from the running gateway."""
    found = call_gateway(config_path, data_dir, "GET", "/admin/webhooks")
    if as_json:
        print_json(found)
        return
    table = Table("webhook", "url", "pending", "delivered", "dead")
    for hook in found["configured"]:
        counts = found["webhooks"].get(hook["name"], {})
        table.add_row(hook["name"], hook["url"], *(str(counts.get(s, 0)) for s in ("pending", "delivered", "dead")))
    console.print(table)
    if found["dead"]:
        dead = Table("id", "webhook", "type", "tries", "last error")
        for row in found["dead"]:
            dead.add_row(row["id"], row["webhook"], row["type"], str(row["attempts"]), row["last_error"] or "")
        console.print(dead)
        console.print("Send one again with `ark events redeliver ID`.")


@events.command("redeliver")
@click.argument("ident", metavar="ID")
@config_options
def events_redeliver(ident: str, config_path: Path | None, data_dir: Path | None) -> None:
    """Send a dead (or delivered) delivery again, its tries starting over."""
    found = call_gateway(config_path, data_dir, "POST", "/admin/webhooks/redeliver", body={"id": ident})
    console.print(f"{found['id']} ({found['type']} to {found['webhook']}) is {found['state']} again")
