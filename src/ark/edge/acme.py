"""`ark certs letsencrypt` and `ark certs renew`: certbot with ARK's own directories, then Nginx.

certbot keeps its account, keys, certificates and renewal settings in ``DATA/certbot/config``
(work and logs beside it), never in the system's /etc/letsencrypt. One certificate per site
name (``--cert-name`` is the name), which is what the rendered sites read:
``DATA/certbot/config/live/NAME/{fullchain,privkey}.pem``. Validation is HTTP-01 through the
webroot ``OUT/acme`` that the rendered port-80 server serves at /.well-known/acme-challenge/, so
Nginx must already be running: the first time, with ``ark render --tls self-signed``.

After certbot: the bundle's ``certs`` and ``nginx`` parts are rendered for Let's Encrypt,
``nginx -t`` checks them and only then is Nginx reloaded (when it runs). A name that fails
does not stop the others; the command fails at the end with certbot's own message for each.
"""

from __future__ import annotations

import http.client
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ark.config import Settings
from ark.edge.certs import CERTBOT_DIR
from ark.edge.files import WriteResult
from ark.edge.ports import port_map
from ark.edge.render import make_context, render_bundle
from ark.edge.sites import edge_sites
from ark.errors import EdgeError

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]
Probe = Callable[[str, int, str, str], bytes | None]  # address, port, path, Host -> body of a 200
CHALLENGE = ".well-known/acme-challenge"
CERTBOT_TIMEOUT_S = 600  # one name: account, order, validation, finalisation; Let's Encrypt can be slow


def run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """The command's output, never raising on a non-zero exit (the caller reads the message)."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=CERTBOT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(list(argv), 124, "", f"{argv[0]} gave no answer in {CERTBOT_TIMEOUT_S} s")


def http_get(address: str, port: int, path: str, host: str) -> bytes | None:
    """Body of a plain-HTTP GET that answered 200, else None."""
    try:
        conn = http.client.HTTPConnection(address, port, timeout=5)
        try:
            conn.request("GET", path, headers={"Host": host})
            reply = conn.getresponse()
            return reply.read() if reply.status == 200 else None
        finally:
            conn.close()
    except (OSError, http.client.HTTPException):
        return None


@dataclass(frozen=True)
class CertbotDirs:
    """certbot's three directories under the data dir."""

    config: Path
    work: Path
    logs: Path

    @classmethod
    def under(cls, data_dir: Path) -> CertbotDirs:
        base = data_dir.absolute() / CERTBOT_DIR
        return cls(base / "config", base / "work", base / "logs")

    @property
    def live(self) -> Path:
        return self.config / "live"

    def args(self) -> list[str]:
        return ["--config-dir", str(self.config), "--work-dir", str(self.work), "--logs-dir", str(self.logs)]


def certonly_argv(
    name: str, webroot: Path, dirs: CertbotDirs, email: str, directory: str, *, force: bool = False
) -> list[str]:
    """One certificate for ``name`` through the webroot; kept as it is while not due (idempotent)."""
    contact = ["-m", email, "--no-eff-email"] if email else ["--register-unsafely-without-email"]
    argv = ["certbot", "certonly", "--webroot", "-w", str(webroot), "-d", name, "--cert-name", name]
    argv += ["--server", directory, "--non-interactive", "--agree-tos", *contact, *dirs.args()]
    return [*argv, "--force-renewal" if force else "--keep-until-expiring"]


def renew_argv(dirs: CertbotDirs, *, force: bool = False) -> list[str]:
    """Every certificate due (or all, ``force``): each with the webroot and directory it was obtained with."""
    # certbot sleeps up to 8 minutes before renewing when it has no terminal; a timer spreads the load instead
    argv = ["certbot", "renew", "--non-interactive", "--no-random-sleep-on-renew", *dirs.args()]
    return [*argv, "--force-renewal"] if force else argv


def lineage_server(renewal_conf: str) -> str | None:
    """The ACME directory a certificate was obtained from (``server =`` in certbot's renewal file)."""
    found = re.search(r"^server\s*=\s*(\S+)\s*$", renewal_conf, re.M)
    return found.group(1).rstrip("/") if found else None


def certbot_message(result: subprocess.CompletedProcess[str], limit: int = 40) -> str:
    """What certbot (or nginx) said about a failure, on stderr: its last lines, less the log-file chatter."""
    text = result.stderr.strip() or result.stdout.strip() or f"exit status {result.returncode}"
    lines = [line for line in text.splitlines() if not line.startswith(_CHATTER)]
    return "\n".join(lines[-limit:])


_CHATTER = ("Saving debug log to ", "Ask for help or search for solutions at ")


def renew_failures(result: subprocess.CompletedProcess[str], live: Path) -> list[str]:
    """The lineages `certbot renew` lists as not renewed ("  LIVE/NAME/fullchain.pem (failure)")."""
    prefix = f"{live}/"
    failed = set()
    for line in (result.stdout + "\n" + result.stderr).splitlines():
        words = line.split()
        if len(words) == 2 and words[1] == "(failure)" and words[0].startswith(prefix):
            failed.add(words[0][len(prefix) :].split("/")[0])
    return sorted(failed)


class Reporter:
    """What a run tells its user: the step under way, and how each one ended. This one says nothing."""

    def step(self, text: str) -> None:
        """A step starts (a spinner shows it)."""

    def outcome(self, text: str, ok: bool = True) -> None:
        """A step ended: a line that stays."""


QUIET = Reporter()
FAILURES_BEFORE_GIVING_UP = 2  # in a row, none issued yet: the CA or certbot is the problem, not one name


@dataclass
class AcmeResult:
    """What a run did: the names obtained or renewed, the render, and whether Nginx was reloaded."""

    names: list[str] = field(default_factory=list)
    render: WriteResult | None = None
    reloaded: bool = False
    notes: list[str] = field(default_factory=list)


class Acme:
    """Obtain and renew the sites' certificates; every outside edge (commands, HTTP) can be replaced."""

    def __init__(self, settings: Settings, out: Path, *, runner: Runner = run_command, probe: Probe = http_get):
        self.settings = settings
        self.out = out.absolute()
        self.dirs = CertbotDirs.under(settings.data_dir)
        self.run = runner
        self.probe = probe
        self.webroot = self.out / "acme"
        edge = settings.edge
        self.conf = self.out / "nginx" / "nginx.conf"
        run = edge.nginx_run_dir
        self.pid_file = run / "nginx.pid" if run else Path("/run/nginx.pid")  # as render_nginx_conf sets it
        # -e: nginx opens its compiled-in error log before it reads the configuration
        self.nginx_e = ["-e", str(run / "error.log")] if run else []

    def names(self) -> list[str]:
        return [site.host for site in edge_sites(self.settings, port_map(self.settings))]

    # -- obtain -----------------------------------------------------------------------------------
    def obtain(self, *, check: bool = True, reload: bool = True, report: Reporter = QUIET) -> AcmeResult:
        _require("certbot", "nginx")
        names = self.names()
        directory = self.settings.edge.acme_directory
        self.webroot.mkdir(parents=True, exist_ok=True)
        self.webroot.chmod(0o755)  # Nginx's workers read the challenges; certbot copies this mode
        if check:
            report.step("checking that Nginx serves the webroot for every name")
            self.check_webroot(names)
            report.outcome(f"Nginx serves {self.webroot} for every name")
        result, failed = AcmeResult(), []
        for name in names:
            report.step(f"{name}: certbot certonly ({directory})")
            force = self._server_changed(name, directory)
            argv = certonly_argv(name, self.webroot, self.dirs, self.settings.edge.email, directory, force=force)
            answer = self.run(argv)
            if answer.returncode != 0:
                failed.append(f"{name}:\n{certbot_message(answer)}")
                report.outcome(f"{name}: certbot failed", ok=False)
                if not result.names and len(failed) == FAILURES_BEFORE_GIVING_UP:
                    failed.append(f"(stopped: the first {len(failed)} names failed, the rest were not tried)")
                    break
                continue
            result.names.append(name)
            kept = "not yet due for renewal" in answer.stdout + answer.stderr
            report.outcome(f"{name}: {'kept (not due for renewal)' if kept else 'issued'}")
        if failed:
            got = f" ({', '.join(result.names)} did; run again once fixed)" if result.names else ""
            lines = "\n\n".join(failed)
            raise EdgeError(f"certbot failed{got}; its logs are in {self.dirs.logs}\n\n{lines}")
        report.step("rendering the sites for these certificates")
        result.render = render_bundle(make_context(self.settings, self.out, "letsencrypt"), ["certs", "nginx"])
        report.outcome("rendered certs/ and nginx/ for Let's Encrypt")
        if self.settings.edge.tls != "letsencrypt":
            result.notes.append('set [edge] tls = "letsencrypt" in ark.toml, or `ark render` goes back to self-signed')
        self._check_and_reload(result, reload, report)
        return result

    def check_webroot(self, names: Sequence[str]) -> None:
        """Each name's challenge URL answers from the webroot here (a failed validation counts against
        Let's Encrypt's limits; this costs nothing)."""
        token = secrets.token_urlsafe(16)
        folder = self.webroot / CHALLENGE
        folder.mkdir(parents=True, exist_ok=True)
        for path in (folder, folder.parent):
            path.chmod(0o755)
        probe = folder / f"ark-check-{token}"
        probe.write_text(token)
        probe.chmod(0o644)
        address = self.settings.edge.listen_address or "127.0.0.1"
        port = self.settings.edge.http_port
        try:
            bad = [n for n in names if self.probe(address, port, f"/{CHALLENGE}/{probe.name}", n) != token.encode()]
        finally:
            probe.unlink(missing_ok=True)
        if bad:
            raise EdgeError(
                f"Nginx on {address}:{port} does not serve {self.webroot} at /{CHALLENGE}/ for {', '.join(bad)}: "
                "start it with this bundle first (the first time: `ark render --tls self-signed`, then "
                f"`nginx -c {self.conf}`), or skip this check with --no-check"
            )

    def _server_changed(self, name: str, directory: str) -> bool:
        """A certificate from another directory (staging, say) is replaced, not kept until it is due."""
        try:
            text = (self.dirs.config / "renewal" / f"{name}.conf").read_text()
        except FileNotFoundError:
            return False
        server = lineage_server(text)
        return server is not None and server != directory.rstrip("/")

    # -- renew ------------------------------------------------------------------------------------
    def renew(self, *, force: bool = False, reload: bool = True, report: Reporter = QUIET) -> AcmeResult:
        _require("certbot")
        before = self._fingerprints()
        if not before:
            raise EdgeError(f"no certificates in {self.dirs.live}: run `ark certs letsencrypt` first")
        report.step(f"certbot renew ({len(before)} certificates)")
        answer = self.run(renew_argv(self.dirs, force=force))
        after = self._fingerprints()
        result = AcmeResult(names=sorted(n for n, cert in after.items() if before.get(n) != cert))
        if answer.returncode == 0:
            report.outcome(f"certbot renew: {len(result.names)} of {len(before)} renewed")
            if result.names:
                _require("nginx")
                self._check_and_reload(result, reload, report)
            return result
        report.outcome(f"certbot renew failed ({len(result.names)} of {len(before)} renewed)", ok=False)
        failed = renew_failures(answer, self.dirs.live)
        what = f" for {', '.join(failed)}" if failed else ""
        problem = f"certbot renew failed{what}; its logs are in {self.dirs.logs}\n{certbot_message(answer)}"
        if not result.names:
            raise EdgeError(problem)
        # Renewed files must reach Nginx now: the next run's "before" already has them, so it would
        # find nothing renewed and owe no reload, and Nginx would serve the old certificates until they expire.
        try:
            _require("nginx")
            self._check_and_reload(result, reload, report)
        except EdgeError as exc:
            raise EdgeError(f"renewed {', '.join(result.names)}, but {exc}\n\n{problem}") from None
        done = "Nginx reloaded" if result.reloaded else "; ".join(["nginx -t passed", *result.notes])
        raise EdgeError(f"renewed {', '.join(result.names)} ({done}), but {problem}")

    def _fingerprints(self) -> dict[str, bytes]:
        found = {}
        for cert in sorted(self.dirs.live.glob("*/cert.pem")):
            try:
                found[cert.parent.name] = cert.read_bytes()
            except OSError:
                continue
        return found

    # -- nginx ------------------------------------------------------------------------------------
    def _check_and_reload(self, result: AcmeResult, reload: bool, report: Reporter) -> None:
        report.step("nginx -t")
        checked = self.run(["nginx", "-t", "-q", *self.nginx_e, "-c", str(self.conf)])
        if checked.returncode != 0:
            raise EdgeError(f"nginx -t fails, Nginx was not reloaded:\n{certbot_message(checked)}")
        report.outcome("nginx -t passed")
        if not reload:
            result.notes.append(f"Nginx not reloaded (--no-reload): nginx -s reload -c {self.conf}")
            return
        if not self.nginx_running():
            result.notes.append(f"Nginx is not running ({self.pid_file}): start it with nginx -c {self.conf}")
            return
        report.step("reloading Nginx")
        reloaded = self.run(["nginx", *self.nginx_e, "-c", str(self.conf), "-s", "reload"])
        if reloaded.returncode != 0:
            raise EdgeError(f"nginx -s reload failed:\n{certbot_message(reloaded)}")
        result.reloaded = True
        report.outcome("Nginx reloaded")

    def nginx_running(self) -> bool:
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
        except PermissionError:
            return True  # there, and not ours to signal: `nginx -s reload` will say more
        except (OSError, ValueError):
            return False
        return True


def _require(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise EdgeError(f"not installed: {', '.join(missing)} (apt-get install {' '.join(missing)})")
