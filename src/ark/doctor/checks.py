"""`ark doctor`: the deployment checklist as checks, each with a status, its evidence and the fix.

    ok       it is as it should be
    warn     it works, but something is off (a certificate expires soon, no backup for days)
    fail     something a box like this needs is missing or broken
    skipped  it does not apply here (no GPU on a laptop, no domain, no WireGuard peers), or cannot be seen
             (the firewall without root)

Each check takes the settings and a :class:`Probes` (how it looks at the machine: HTTP, commands,
sockets, the clock), so tests give it a machine of their own. The checks reuse what the rest of ARK
already knows how to look at: `ark audit` (sockets, firewall, certificates, sign-in through Nginx), `ark
status` (the gateway and the engines), `ark upgrade --check` (the schema), the backups folder.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ark.backup import archive
from ark.config import Settings
from ark.config.inference import DEFAULT_ENGINES
from ark.config.types import Address
from ark.deploy.box import compose_rows
from ark.deploy.compose import COMPOSE_FILE
from ark.edge.audit import Auditor, Problem
from ark.edge.render import default_out
from ark.status import collect_status
from ark.store.migrate import database_url, open_engine, plan

Status = Literal["ok", "warn", "fail", "skipped"]
_EXAMPLE_KEYS = ("example", "changeme", "change-me", "secret", "sk-1234", "your-key", "xxxx")
MIN_FREE = 5 * 2**30  # a data directory with less is short of room (models, the ledger, backups)


@dataclass(frozen=True)
class Result:
    check: str
    status: Status
    evidence: str
    fix: str = ""


def http_get(url: str, timeout: float = 3.0) -> tuple[int, bytes] | None:
    """GET ``url``: (status, body), or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - ARK's own addresses
            return int(answer.status), answer.read(1 << 20)
    except urllib.error.HTTPError as exc:
        return int(exc.code), b""
    except (OSError, ValueError):
        return None


def run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str] | None:
    """A command's result, or None when it is not installed."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


@dataclass
class Probes:
    http: Callable[[str], tuple[int, bytes] | None] = http_get
    command: Callable[[Sequence[str]], subprocess.CompletedProcess[str] | None] = run_command
    now: Callable[[], float] = time.time
    audit: Callable[[Settings, Path], list[Problem]] | None = None  # None: `ark audit`'s own
    status: Callable[[Settings], dict[str, Any]] | None = None  # None: `ark status`'s own
    nvml: Callable[[], str | None] | None = None  # the driver's version, None without a GPU
    sys_net: Path = Path("/sys/class/net")  # network interfaces (WireGuard's is one)


def _local(address: Address) -> str:
    return f"http://{address.local()}"


def _json(answer: tuple[int, bytes] | None) -> Any:
    if answer is None or answer[0] != 200:
        return None
    try:
        return json.loads(answer[1])
    except ValueError:
        return None


@dataclass
class Doctor:
    settings: Settings
    probes: Probes = field(default_factory=Probes)

    def run(self) -> list[Result]:
        found: list[Result] = []
        for check in (
            self.master_key,
            self.data,
            self.database,
            self.gateway_and_engines,
            self.gpu,
            self.docker,
            self.containers,
            self.nginx,
            self.edge,
            self.prometheus,
            self.node_exporter,
            self.alerts,
            self.dashboards,
            self.wireguard,
            self.backups,
        ):
            try:
                found += list(check())
            except Exception as exc:  # a check that breaks says so; the others still run
                found.append(Result(check.__name__.replace("_", "-"), "fail", f"the check failed: {exc!r}"))
        return found

    # -- ARK itself -----------------------------------------------------------------------------------
    def master_key(self) -> Iterator[Result]:
        key = self.settings.master_key.value
        if not key:
            yield Result("master-key", "fail", "no master key is set", "`ark init` writes one; or set ARK_MASTER_KEY")
        elif len(key) < 32 or any(word in key.lower() for word in _EXAMPLE_KEYS):
            yield Result(
                "master-key",
                "fail",
                f"the master key looks like an example ({len(key)} characters)",
                "generate one: python -c \"import secrets; print('sk-ark-' + secrets.token_urlsafe(32))\"",
            )
        else:
            yield Result("master-key", "ok", f"set, {len(key)} characters")

    def data(self) -> Iterator[Result]:
        data = self.settings.data_dir
        if not data.is_dir():
            yield Result("data", "fail", f"{data} does not exist", f"mkdir -m 0700 {data} (or `ark init`)")
            return
        info = data.stat()
        mode = info.st_mode & 0o777
        free = shutil.disk_usage(data).free
        mount = _mount_point(data)
        evidence = f"{data} ({oct(mode)}), on {mount}, {free / 2**30:.0f} GiB free"
        owner = _uid(self.settings.deploy.user)
        if mode & 0o066:  # read or write for others (traverse is fine: Nginx reaches the bundle's files)
            yield Result("data", "fail", evidence, f"chmod 0711 {data}: it holds keys and the ledger")
        elif owner is not None and info.st_uid != owner:
            fix = f"chown -R {self.settings.deploy.user} {data}: ark.service runs as {self.settings.deploy.user}"
            yield Result("data", "warn", evidence + f", owned by uid {info.st_uid}", fix)
        elif free < MIN_FREE:
            yield Result("data", "warn", evidence, "free space there: models, the ledger and backups grow")
        else:
            yield Result("data", "ok", evidence)

    def database(self) -> Iterator[Result]:
        settings = self.settings
        if not settings.store.url and not (settings.data_dir / "ark.db").is_file():
            yield Result("database", "warn", "no database yet", "`ark up` makes it at its first start")
            return
        engine = open_engine(database_url(settings.store.url, settings.data_dir))
        try:
            found = plan(engine)
        finally:
            engine.dispose()
        if found.newer:
            yield Result(
                "database", "fail", f"schema {found.current}: newer than this ARK ({found.head})", "upgrade ARK"
            )
        elif found.steps:
            steps = ", ".join(revision for revision, _ in found.steps)
            yield Result("database", "warn", f"schema {found.current}, {found.head} due ({steps})", "`ark upgrade`")
        else:
            yield Result("database", "ok", f"schema {found.head}")

    def gateway_and_engines(self) -> Iterator[Result]:
        if self.probes.status is None and not self.settings.data_dir.is_dir():
            yield Result("engines", "skipped", "no data directory yet (looking would make one)")
            return
        status = (self.probes.status or _status)(self.settings)
        gateway = status["gateway"]
        if gateway["running"]:
            ready: Status = "ok" if gateway["ready"] else "warn"
            yield Result("gateway", ready, f"{gateway['url']} answers{'' if gateway['ready'] else ', not ready'}")
        else:
            yield Result("gateway", "fail", f"nothing answers at {gateway['url']}", "`ark up` (or systemctl start ark)")
        served: dict[str, set[str]] = {engine["name"]: set() for engine in status["engines"]}
        for model in status["models"]:
            served.setdefault(model["engine"], set()).add(model["id"])
        for engine in status["engines"]:
            if engine["up"]:
                yield Result(f"engine {engine['name']}", "ok", f"up, {len(served[engine['name']])} models")
            elif engine["kind"] == "ollama" and self._optional_ollama(engine["name"], status["engines"]):
                yield Result(f"engine {engine['name']}", "skipped", f"not running ({engine['error']}); not needed")
            else:
                fix = "systemctl start ollama" if engine["kind"] == "ollama" else "see `ark status`"
                yield Result(f"engine {engine['name']}", "fail", engine["error"] or "down", fix)
        for model in self.settings.models:
            engines = [model.engine] if model.engine else list(served)
            where = [n for n in engines if model.id in served.get(n, ()) or f"{model.id}:latest" in served.get(n, ())]
            if where:
                yield Result(f"model {model.id}", "ok", f"served by {', '.join(where)}")
            elif model.engine and model.engine not in served:
                yield Result(f"model {model.id}", "skipped", f"its engine {model.engine} is not configured")
            else:
                pull = f"ollama pull {model.id}" if "ollama" in served else f"`ark models pull` or put {model.id}.gguf"
                yield Result(f"model {model.id}", "fail", "configured, but no engine serves it", pull)

    def _optional_ollama(self, name: str, engines: list[dict[str, Any]]) -> bool:
        """The default configuration's Ollama, down while another engine serves and no model needs it: a
        laptop without Ollama, which is how ARK starts out of the box."""
        defaults = set(DEFAULT_ENGINES)
        configured = {e.name for e in self.settings.engines}
        another = any(e["up"] for e in engines if e["name"] != name)
        needed = any(m.engine == name for m in self.settings.models)
        return configured <= defaults and another and not needed

    def gpu(self) -> Iterator[Result]:
        device = self.settings.gpu.device
        version = (self.probes.nvml or _nvml_driver)()
        if version is not None:
            state: Status = "ok" if _major(version) >= 570 else "warn"
            fix = "" if state == "ok" else "the reference box runs driver 570 or newer (CUDA 12.8+)"
            yield Result("nvidia", state, f"NVIDIA driver {version}", fix)
        elif device == "nvml":
            yield Result("nvidia", "fail", "[gpu] device = nvml, but NVML finds no GPU", "install the NVIDIA driver")
        else:
            yield Result("nvidia", "skipped", f"no NVIDIA GPU ([gpu] device = {device})")

    def docker(self) -> Iterator[Result]:
        done = self.probes.command(["docker", "info", "--format", "{{json .Runtimes}}"])
        if done is None:
            yield Result("docker", "skipped", "Docker is not installed (ARK runs its services itself)")
            return
        if done.returncode != 0:  # (ARK runs its services itself today: containers are optional)
            why = done.stderr.strip().splitlines()[-1][:200] if done.stderr.strip() else "docker info failed"
            yield Result("docker", "skipped", f"installed, daemon not answering ({why})")
            return
        nvidia = "nvidia" in done.stdout
        has_gpu = (self.probes.nvml or _nvml_driver)() is not None
        if has_gpu and not nvidia:
            yield Result("docker", "warn", "no nvidia runtime", "install the NVIDIA Container Toolkit")
        else:
            yield Result("docker", "ok", "running" + (", nvidia runtime" if nvidia else ""))

    def containers(self) -> Iterator[Result]:
        """Each service of the bundle's compose file running, and healthy where it has a healthcheck."""
        file = self._bundle() / COMPOSE_FILE
        if not file.is_file():
            yield Result("containers", "skipped", "no compose file in the bundle (no services in containers)")
            return
        try:
            wanted = sorted((yaml.safe_load(file.read_text()) or {}).get("services") or {})
        except (OSError, yaml.YAMLError) as exc:
            yield Result("containers", "fail", f"{file} does not read: {exc}", "ark render")
            return
        done = self.probes.command(["docker", "compose", "-f", str(file), "ps", "--all", "--format", "json"])
        if done is not None and done.returncode != 0 and "permission denied" in done.stderr.lower():
            yield Result("containers", "skipped", "Docker answers root only here", "run `ark doctor` as root")
            return
        if done is None or done.returncode != 0:
            why = "Docker is not installed" if done is None else (done.stderr.strip()[-200:] or "docker compose failed")
            yield Result("containers", "fail", why, "install Docker with its compose plugin; then ark deploy apply")
            return
        rows = {row.get("Service"): row for row in compose_rows(done.stdout)}
        for service in wanted:
            row = rows.get(service)
            state, health = (row or {}).get("State", "absent"), (row or {}).get("Health", "")
            if state == "running" and health in ("", "healthy"):
                yield Result(f"container {service}", "ok", f"running{', healthy' if health else ''}")
            elif state == "running" and health == "starting":
                yield Result(f"container {service}", "warn", "running, its healthcheck not passed yet")
            else:
                seen = state + (f", {health}" if health else "")
                fix = f"docker compose -f {file} logs {service}; then docker compose -f {file} up -d {service}"
                yield Result(f"container {service}", "fail", seen, fix)

    # -- the edge -------------------------------------------------------------------------------------
    def _bundle(self) -> Path:
        return default_out(self.settings)

    def nginx(self) -> Iterator[Result]:
        if not self.settings.edge.domain:
            yield Result("nginx", "skipped", "no [edge] domain: nothing is published")
            return
        conf = self._bundle() / "nginx" / "nginx.conf"
        if not conf.is_file():
            yield Result("nginx", "fail", f"no {conf}", "`ark render`")
            return
        run = self.settings.edge.nginx_run_dir
        if run is None and not _root():
            yield Result("nginx", "skipped", "nginx -t needs root here (its pid file, the certificates): run as root")
            return
        checked = self.probes.command(
            ["nginx", "-t", "-q", *(["-e", str(run / "error.log")] if run else []), "-c", str(conf)]
        )
        if checked is None:
            yield Result("nginx", "fail", "nginx is not installed", "apt-get install nginx")
        elif checked.returncode != 0:
            yield Result(
                "nginx", "fail", checked.stderr.strip()[-300:], f"fix {conf}'s source: ark.toml, then `ark render`"
            )
        else:
            yield Result("nginx", "ok", f"nginx -t passes for {conf}")

    def edge(self) -> Iterator[Result]:
        """`ark audit`'s checks: what listens where, the firewall, credentials, certificates."""
        problems = (self.probes.audit or _audit)(self.settings, self._bundle())
        by_check = {
            "exposure": ("public-bind", "unexpected-port"),
            "firewall": ("no-firewall", "not-persisted"),
            "sign-in": ("open-without-auth",),
            "certificates": ("cert-expiring", "cert-expired"),
        }
        for name, checks in by_check.items():
            found = [p for p in problems if p.check in checks]
            if not found:
                yield Result(name, "ok", "nothing to report (ark audit)")
                continue
            worst: Status = "fail" if any(p.severity == "error" for p in found) else "warn"
            evidence = "; ".join(f"{p.subject}: {p.detail}" for p in found[:3]) + (" ..." if len(found) > 3 else "")
            yield Result(name, worst, evidence, _EDGE_FIX[name])

    # -- monitoring -----------------------------------------------------------------------------------
    def _monitored(self) -> bool:
        embedded = self.settings.monitor.embedded
        return embedded == "yes" or (embedded == "auto" and shutil.which("prometheus") is not None)

    def prometheus(self) -> Iterator[Result]:
        base = _local(self.settings.monitor.prometheus_listen)
        targets = _json(self.probes.http(base + "/api/v1/targets?state=active"))
        if targets is None:
            state: Status = "fail" if self._monitored() else "skipped"
            yield Result("prometheus", state, f"nothing answers at {base}", "`ark up` runs it; see `ark status`")
            return
        active = (targets.get("data") or {}).get("activeTargets") or []
        down = [(t.get("labels") or {}).get("job", "?") for t in active if t.get("health") == "down"]
        rules = _json(self.probes.http(base + "/api/v1/rules")) or {}
        groups = (rules.get("data") or {}).get("groups") or []
        loaded = sum(len(g.get("rules", [])) for g in groups)
        evidence = f"{len(active) - len(down)} of {len(active)} targets up, {loaded} rules loaded"
        if not active:
            yield Result("prometheus", "fail", evidence, "its scrape config is empty: `ark render`, restart ARK")
        elif down:
            yield Result("prometheus", "fail", evidence + f"; down: {', '.join(sorted(set(down)))}", "see `ark status`")
        elif not loaded:
            yield Result("prometheus", "fail", evidence, "`ark render` writes the rules; restart ARK")
        else:
            yield Result("prometheus", "ok", evidence)

    def node_exporter(self) -> Iterator[Result]:
        url = _local(self.settings.monitor.node_exporter_listen) + "/metrics"
        answer = self.probes.http(url)
        if answer is not None and answer[0] == 200:
            yield Result("node-exporter", "ok", f"{url} answers")
        else:
            state: Status = "fail" if self._monitored() else "skipped"
            yield Result(
                "node-exporter", state, f"nothing answers at {url}", "`ark up` runs it (prometheus-node-exporter)"
            )

    def alerts(self) -> Iterator[Result]:
        monitor = self.settings.monitor
        if not (monitor.alert_webhook_url or monitor.alert_email):
            state: Status = "warn" if self._monitored() else "skipped"
            yield Result(
                "alerts",
                state,
                "no receiver: alerts fire and nobody hears",
                "[monitor] alert_email or alert_webhook_url",
            )
            return
        answer = self.probes.http(_local(monitor.alertmanager_listen) + "/-/ready")
        if answer is None or answer[0] != 200:
            yield Result("alerts", "fail", "Alertmanager does not answer", "`ark up` runs it (prometheus-alertmanager)")
        else:
            where = monitor.alert_email or monitor.alert_webhook_url
            yield Result("alerts", "ok", f"Alertmanager routes them to {where}")

    def dashboards(self) -> Iterator[Result]:
        folder = self._bundle() / "grafana" / "dashboards"
        found = sorted(folder.glob("*.json")) if folder.is_dir() else []
        if found:
            yield Result("dashboards", "ok", f"{len(found)} dashboards provisioned in {folder}")
        else:
            state: Status = "warn" if self._monitored() else "skipped"
            yield Result("dashboards", state, f"none in {folder}", "`ark render`")

    # -- access and data ------------------------------------------------------------------------------
    def wireguard(self) -> Iterator[Result]:
        peers = self.settings.data_dir / "wireguard" / "peers"
        if not peers.is_dir() or not any(peers.iterdir()):
            yield Result("wireguard", "skipped", "no peers (`ark peers add` makes one)")
            return
        name = self.settings.wireguard.interface
        if not (self.probes.sys_net / name).exists():
            yield Result("wireguard", "fail", f"{name} is not up", f"wg-quick up {name} (the bundle's wireguard/)")
            return
        shown = self.probes.command(["wg", "show", name, "peers"]) if _root() else None
        count = f" with {len(shown.stdout.split())} peers" if shown is not None and shown.returncode == 0 else ""
        yield Result("wireguard", "ok", f"{name} up{count}")

    def backups(self) -> Iterator[Result]:
        found = archive.backups(self.settings.backups_dir)
        every = self.settings.backup.every_hours or 24.0
        if not found:
            yield Result(
                "backups",
                "warn",
                f"none in {self.settings.backups_dir}",
                "`ark backup`, and a schedule: [backup] every_hours or ark-backup.timer",
            )
            return
        age_h = (self.probes.now() - archive.made_at(found[-1])) / 3600
        evidence = f"newest {found[-1].name}, {age_h:.0f} h old"
        if age_h > 2 * every:
            yield Result(
                "backups", "warn", evidence, "backups stopped: see `ark status` (backup) or the timer's journal"
            )
        else:
            yield Result("backups", "ok", evidence)


_EDGE_FIX = {
    "exposure": "bind it to 127.0.0.1 (its config), or let the firewall drop it: `ark firewall apply`",
    "firewall": "`ark firewall apply`, then `ark firewall confirm`",
    "sign-in": "`ark render` and reload Nginx: every site behind the sign-in",
    "certificates": "`ark certs letsencrypt` (or renew: certbot renew)",
}


def _audit(settings: Settings, bundle: Path) -> list[Problem]:
    return Auditor(settings, bundle).run().problems


def _status(settings: Settings) -> dict[str, Any]:
    return asyncio.run(collect_status(settings))


def _nvml_driver() -> str | None:
    try:
        pynvml: Any = importlib.import_module("pynvml")
        pynvml.nvmlInit()
    except Exception:  # no library, no driver, no GPU: all the same here
        return None
    try:
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    finally:
        pynvml.nvmlShutdown()


def _root() -> bool:
    return os.geteuid() == 0


def _uid(user: str) -> int | None:
    import pwd

    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:  # no such user here (a laptop): nothing to compare
        return None


def _major(version: str) -> int:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def _mount_point(path: Path) -> str:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return str(path)


def worst(results: Sequence[Result]) -> Status:
    order: dict[Status, int] = {"skipped": 0, "ok": 1, "warn": 2, "fail": 3}
    return max((r.status for r in results), key=lambda s: order[s], default="ok")


def as_json(results: Sequence[Result]) -> dict[str, Any]:
    return {
        "status": worst(results),
        "checks": [{"check": r.check, "status": r.status, "evidence": r.evidence, "fix": r.fix} for r in results],
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
