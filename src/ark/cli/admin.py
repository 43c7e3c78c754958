"""`ark keys`, `ark teams`, `ark usage`: thin wrappers over the running gateway's management API."""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from ark.cli.common import Table, call_gateway, config_options, make_console, print_json

F = TypeVar("F", bound=Callable[..., Any])
console = make_console()


def limit_options(fn: F) -> F:
    """The fields keys and teams share, as options; only the ones given are sent."""

    @click.option("--models", help="Comma-separated models or aliases it may use (default: all).")
    @click.option("--max-budget", type=float, help="Credits it may spend per budget period.")
    @click.option("--budget-duration", help='Budget period, e.g. "1d", "7d", "30d" (default: never resets).')
    @click.option("--max-tokens-budget", type=int, help="Tokens it may use per budget period (free models too).")
    @click.option("--tpm", "tpm_limit", type=int, help="Tokens per minute.")
    @click.option("--rpm", "rpm_limit", type=int, help="Requests per minute.")
    @click.option("--max-parallel", "max_parallel_requests", type=int, help="Requests at once.")
    @click.option("--metadata", help="A JSON object kept with it.")
    @functools.wraps(fn)
    def wrapper(*args: Any, models: str | None, metadata: str | None, **kwargs: Any) -> Any:
        fields: dict[str, Any] = {}
        if models is not None:
            fields["models"] = [m.strip() for m in models.split(",") if m.strip()]
        if metadata is not None:
            try:
                fields["metadata"] = orjson.loads(metadata)
            except orjson.JSONDecodeError:
                raise click.BadParameter("not JSON", param_hint="--metadata") from None
        for name in (
            "max_budget",
            "budget_duration",
            "max_tokens_budget",
            "tpm_limit",
            "rpm_limit",
            "max_parallel_requests",
        ):
            if kwargs.get(name) is not None:
                fields[name] = kwargs[name]
            kwargs.pop(name, None)
        return fn(*args, fields=fields, **kwargs)

    return wrapper  # type: ignore[return-value]


def _keys_table(keys: list[dict[str, Any]]) -> Table:
    table = Table("alias", "key", "user", "team", "models", "spend", "budget", "tokens", "expires", "state")
    for k in keys:
        budget = "-" if k["max_budget"] is None else f"{k['max_budget']:g}/{k['budget_duration'] or 'ever'}"
        state = "[red]blocked[/]" if k["blocked"] else "[green]active[/]"
        table.add_row(
            k["key_alias"] or "",
            k["key_name"],
            k["user_id"] or "",
            k["team_id"] or "",
            ",".join(k["models"]) or "all",
            f"{k['spend']:g}",
            budget,
            str(k["tokens_used"]),
            (k["expires"] or "never")[:16],
            state,
        )
    return table


@click.group()
def keys() -> None:
    """Virtual keys: who may use which models, with which budgets and limits."""


@keys.command("create")
@config_options
@limit_options
@click.option("--alias", "key_alias", help="A name for the key.")
@click.option("--user", "user_id", help="Its owner (an e-mail address).")
@click.option("--team", "team_id", help="Its team (team-...).")
@click.option("--duration", help='Lifetime, e.g. "30d" (default: no expiry).')
@click.option(
    "--trust-user-headers",
    is_flag=True,
    default=None,
    help="An application's key (Open WebUI's): charge each request to the person its X-OpenWebUI-User-Email names.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def keys_create(
    config_path: Path | None, data_dir: Path | None, fields: dict[str, Any], as_json: bool, **options: Any
) -> None:
    """Create a key; it is shown once."""
    body = {**fields, **{k: v for k, v in options.items() if v is not None}}
    created = call_gateway(config_path, data_dir, "POST", "/key/generate", body=body)
    if as_json:
        print_json(created)
        return
    console.print(f"[bold]{created['key']}[/]")
    console.print("Shown once: store it now. Its token (for info, update, revoke) is " + created["token"])


@keys.command("list")
@config_options
@click.option("--team", "team_id", help="Only this team's keys.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def keys_list(config_path: Path | None, data_dir: Path | None, team_id: str | None, as_json: bool) -> None:
    """Every key, with its spend and limits."""
    query = {"return_full_object": "true", **({"team_id": team_id} if team_id else {})}
    listed = call_gateway(config_path, data_dir, "GET", "/key/list", query=query)["keys"]
    if as_json:
        print_json(listed)
    else:
        console.print(_keys_table(listed))


@keys.command("info")
@config_options
@click.argument("key")
def keys_info(config_path: Path | None, data_dir: Path | None, key: str) -> None:
    """One key (by the key itself or its token), as JSON."""
    print_json(call_gateway(config_path, data_dir, "GET", "/key/info", query={"key": key})["info"])


@keys.command("update")
@config_options
@limit_options
@click.argument("key")
@click.option("--alias", "key_alias", help="A new name.")
@click.option("--block/--unblock", "blocked", default=None, help="Refuse (or accept again) its requests.")
def keys_update(
    config_path: Path | None, data_dir: Path | None, key: str, fields: dict[str, Any], **options: Any
) -> None:
    """Change a key's limits, name or state."""
    body = {"key": key, **fields, **{k: v for k, v in options.items() if v is not None}}
    updated = call_gateway(config_path, data_dir, "POST", "/key/update", body=body)
    console.print(_keys_table([updated]))


@keys.command("revoke")
@config_options
@click.argument("key", nargs=-1, required=True)
def keys_revoke(config_path: Path | None, data_dir: Path | None, key: tuple[str, ...]) -> None:
    """Delete keys (by key or token): they stop working at once."""
    deleted = call_gateway(config_path, data_dir, "POST", "/key/delete", body={"keys": list(key)})["deleted_keys"]
    console.print(f"revoked {len(deleted)} key(s)")
    if len(deleted) != len(key):
        raise click.ClickException(f"{len(key) - len(deleted)} key(s) did not exist")


@click.group()
def teams() -> None:
    """Teams: shared budgets and limits for a group of keys."""


@teams.command("create")
@config_options
@limit_options
@click.option("--alias", "team_alias", help="A name for the team.")
@click.option("--id", "team_id", help="Choose the team id (default: team-<random>).")
def teams_create(config_path: Path | None, data_dir: Path | None, fields: dict[str, Any], **options: Any) -> None:
    """Create a team."""
    team = call_gateway(
        config_path,
        data_dir,
        "POST",
        "/team/new",
        body={**fields, **{k: v for k, v in options.items() if v is not None}},
    )
    console.print(f"created [bold]{team['team_id']}[/] ({team['team_alias'] or 'no alias'})")


@teams.command("list")
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def teams_list(config_path: Path | None, data_dir: Path | None, as_json: bool) -> None:
    """Every team."""
    listed = call_gateway(config_path, data_dir, "GET", "/team/list")
    if as_json:
        print_json(listed)
        return
    table = Table("team", "alias", "models", "spend", "budget", "state")
    for t in listed:
        table.add_row(
            t["team_id"],
            t["team_alias"] or "",
            ",".join(t["models"]) or "all",
            f"{t['spend']:g}",
            "-" if t["max_budget"] is None else f"{t['max_budget']:g}",
            "[red]blocked[/]" if t["blocked"] else "[green]active[/]",
        )
    console.print(table)


@teams.command("info")
@config_options
@click.argument("team_id")
def teams_info(config_path: Path | None, data_dir: Path | None, team_id: str) -> None:
    """One team and its keys, as JSON."""
    print_json(call_gateway(config_path, data_dir, "GET", "/team/info", query={"team_id": team_id}))


@click.command()
@config_options
@click.option("--since", help="First day, YYYY-MM-DD.")
@click.option("--until", help="Last day, YYYY-MM-DD.")
@click.option(
    "--by",
    type=click.Choice(["key", "team", "model", "day", "user"]),
    default="key",
    show_default=True,
    help="How to group the rows.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the daily rows as JSON.")
def usage(
    config_path: Path | None, data_dir: Path | None, since: str | None, until: str | None, by: str, as_json: bool
) -> None:
    """Requests, tokens and spend from the ledger's daily rollups."""
    query = {k: v for k, v in (("start_date", since), ("end_date", until)) if v}
    if by == "user":  # per person, from the ledger's rows (the daily rollups are per key)
        rows = call_gateway(config_path, data_dir, "GET", "/usage/people", query=query)
        if as_json:
            print_json(rows)
            return
        table = Table("user", "requests", "prompt tokens", "completion tokens", "spend")
        for row in rows:
            table.add_row(
                row["user"] or "-",
                str(row["requests"]),
                str(row["prompt_tokens"]),
                str(row["completion_tokens"]),
                f"{row['cost']:.4f}",
            )
        console.print(table)
        return
    rows = call_gateway(config_path, data_dir, "GET", "/usage/daily", query=query)
    if as_json:
        print_json(rows)
        return
    field = {"key": "key", "team": "team_id", "model": "model", "day": "day"}[by]
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0, 0.0])
    for row in rows:
        total = totals[row[field] or "-"]
        total[0] += row["requests"]
        total[1] += row["prompt_tokens"]
        total[2] += row["completion_tokens"]
        total[3] += row["cost"]
    table = Table(by, "requests", "prompt tokens", "completion tokens", "spend")
    for name, (requests, prompt, completion, cost) in sorted(totals.items()):
        table.add_row(name, f"{requests:.0f}", f"{prompt:.0f}", f"{completion:.0f}", f"{cost:.4f}")
    console.print(table)
