"""Alert delivery end to end, with the real binaries: ARK's rendered prometheus.yml, rules and
alertmanager.yml, run by a real Prometheus and Alertmanager (started as ``ark up`` starts them), make
ARK's ``ScrapeTargetDown`` fire for a target that answers 503, and a webhook (an HTTP server in the
test) or a mailbox (an SMTP sink in the test) must receive the alert, then its resolve once the target
answers again."""

from __future__ import annotations

import asyncio
import email
import email.policy
import html
import json
import shutil
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ark.config import Settings, load_settings
from ark.monitor import embedded, prometheus
from ark.supervisor import Supervisor
from tests.conftest import MASTER_KEY, LoopThread, free_port, wait_until

needs_binaries = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("prometheus-alertmanager") is None,
    reason="prometheus / prometheus-alertmanager (Debian packages) are not installed",
)
ALERT = "ScrapeTargetDown"  # ARK's alert on `up`: the one a test can trigger without breaking anything real


def _serve(server: socketserver.BaseServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


class _Background:
    """A server on a free loopback port, served from a daemon thread."""

    thread: threading.Thread

    @property
    def address(self) -> str:
        assert isinstance(self, socketserver.TCPServer)
        return f"127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        assert isinstance(self, socketserver.BaseServer)
        self.shutdown()
        self.server_close()
        self.thread.join(5)


class Stub(_Background, ThreadingHTTPServer):
    """A scrape target (``GET /metrics``: empty, or 503 while ``down``) and a webhook (records each
    POSTed JSON body)."""

    daemon_threads = True

    def __init__(self, *, down: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _StubHandler)
        self.down = down
        self.posts: list[dict[str, Any]] = []
        self.thread = _serve(self)


class _StubHandler(BaseHTTPRequestHandler):
    server: Stub

    def do_GET(self) -> None:
        self._answer(503 if self.server.down else 200)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.posts.append(json.loads(body))
        self._answer(200)

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


class SmtpSink(_Background, socketserver.ThreadingTCPServer):
    """Just enough SMTP (no STARTTLS, no AUTH) to take Alertmanager's mail: each message, parsed, with
    its envelope recipients."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SmtpSession)
        self.messages: list[tuple[list[str], EmailMessage]] = []
        self.thread = _serve(self)


class _SmtpSession(socketserver.StreamRequestHandler):
    server: SmtpSink

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        self.reply("220 sink ESMTP")
        recipients: list[str] = []
        while line := self.rfile.readline():
            verb, _, arg = line.decode().rstrip("\r\n").partition(" ")
            verb = verb.upper()
            if verb == "QUIT":
                self.reply("221 bye")
                return
            if verb == "RCPT":
                recipients.append(arg.partition(":")[2].strip(" <>"))
            if verb == "DATA":
                self.reply("354 end with .")
                lines = []
                while (data := self.rfile.readline()) not in (b".\r\n", b""):
                    lines.append(data[1:] if data.startswith(b"..") else data)  # dot-stuffing
                message = email.message_from_bytes(b"".join(lines), policy=email.policy.default)
                assert isinstance(message, EmailMessage)
                self.server.messages.append((recipients, message))
                recipients = []
            self.reply("250 sink" if verb in ("EHLO", "HELO") else "250 ok")  # MAIL, RCPT, DATA done, RSET


def ark_settings(tmp_path: Path, gateway: Stub, node: Stub, monitor: str) -> Settings:
    ports = {name: free_port() for name in ("prometheus", "alertmanager")}
    config = tmp_path / "ark.toml"
    config.write_text(
        f'master_key = "{MASTER_KEY}"\n[gateway]\nlisten = "{gateway.address}"\n'
        f'[monitor]\nscrape_interval_s = 1\nprometheus_listen = "127.0.0.1:{ports["prometheus"]}"\n'
        f'alertmanager_listen = "127.0.0.1:{ports["alertmanager"]}"\nnode_exporter_listen = "{node.address}"\n'
        + monitor
    )
    return load_settings(config_path=config, data_dir=tmp_path / "data", env={})


def write_bundle(settings: Settings, bundle: Path) -> None:
    """ARK's monitoring bundle (no GPU job), with three durations shortened in this copy only: the alert's
    `for: 2m` and the route's group_wait (30s) and group_interval (5m) are constants of ARK's, right for
    a real box, and would make this test take minutes. Everything else is as rendered."""
    files = prometheus.render(settings, gpu=False)
    rules = yaml.safe_load(files[f"prometheus/{prometheus.RULES_FILE}"])
    [rule] = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == ALERT]
    rule["for"] = "1s"  # still pending for one evaluation before it fires
    files[f"prometheus/{prometheus.RULES_FILE}"] = yaml.safe_dump(rules, sort_keys=False)
    alertmanager = yaml.safe_load(files["alertmanager/alertmanager.yml"])
    alertmanager["route"].update(group_wait="1s", group_interval="1s")
    files["alertmanager/alertmanager.yml"] = yaml.safe_dump(alertmanager, sort_keys=False)
    for name, text in files.items():
        (bundle / name).parent.mkdir(parents=True, exist_ok=True)
        (bundle / name).write_text(text)


@contextmanager
def running(settings: Settings, tmp_path: Path, loop_thread: LoopThread) -> Iterator[None]:
    """Alertmanager and Prometheus with the argv `ark up` gives them, on the test's bundle."""
    bundle = tmp_path / "bundle"
    write_bundle(settings, bundle)
    supervisor = Supervisor(tmp_path / "logs")
    specs = [s.spec for s in embedded.services(settings, bundle, gpu=False) if s.name in ("alertmanager", "prometheus")]
    try:

        async def start() -> None:
            for spec in specs:
                assert spec is not None
                await supervisor.start(spec)

        loop_thread.run(start(), timeout=90)
        # An alert that fires before Prometheus' discovery (every 5 s) names the Alertmanager is dropped
        # and only resent a minute later: the test takes its target down once Prometheus knows where to send
        known = f"http://{prometheus.scrape_target(settings.monitor.prometheus_listen)}/api/v1/alertmanagers"

        def knows_alertmanager() -> bool:
            return bool(httpx.get(known, timeout=5).json()["data"]["activeAlertmanagers"])

        assert wait_until(knows_alertmanager, 30, interval=0.2), logs(tmp_path)
        yield
    finally:
        loop_thread.run(supervisor.close())


def logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((tmp_path / "logs").glob("*.log")))


@pytest.fixture
def targets() -> Iterator[tuple[Stub, Stub]]:
    """The gateway's target and node_exporter's (the one the tests take down and bring back)."""
    gateway, node = Stub(), Stub()
    yield gateway, node
    gateway.close()
    node.close()


@needs_binaries
def test_a_firing_alert_and_its_resolve_reach_the_webhook(
    tmp_path: Path, loop_thread: LoopThread, targets: tuple[Stub, Stub]
) -> None:
    gateway, node = targets
    hook = Stub()
    try:
        settings = ark_settings(tmp_path, gateway, node, f'alert_webhook_url = "http://{hook.address}/hook/ark"\n')
        assert yaml.safe_load(prometheus.alertmanager_yml(settings))["receivers"][0]["webhook_configs"][0][
            "send_resolved"
        ]
        rule = next(a for a in prometheus.alerts(settings) if a.name == ALERT)

        def notification(status: str) -> dict[str, Any] | None:
            return next(
                (
                    p
                    for p in list(hook.posts)
                    if p["status"] == status and any(a["labels"]["alertname"] == ALERT for a in p["alerts"])
                ),
                None,
            )

        with running(settings, tmp_path, loop_thread):
            node.down = True  # its scrapes answer 503: up == 0
            assert wait_until(lambda: notification("firing") is not None, 30, interval=0.1), (
                f"{hook.posts}\n{logs(tmp_path)}"
            )
            firing = notification("firing")
            assert firing is not None
            assert firing["version"] == "4" and firing["receiver"] == "ark"
            assert firing["groupLabels"] == {"alertname": ALERT, "instance": node.address}
            [alert] = firing["alerts"]
            assert alert["status"] == "firing"
            assert alert["labels"] == {
                "alertname": ALERT,
                "job": "node",
                "instance": node.address,
                "severity": "critical",
            }
            assert alert["annotations"] == {
                "summary": f"node on {node.address} cannot be scraped",
                "runbook": rule.runbook,
            }
            assert not any(p["status"] == "resolved" for p in hook.posts)

            node.down = False  # the target answers again: the alert resolves
            assert wait_until(lambda: notification("resolved") is not None, 30, interval=0.1), (
                f"{hook.posts}\n{logs(tmp_path)}"
            )
            resolved = notification("resolved")
            assert resolved is not None
            [alert] = resolved["alerts"]
            assert alert["status"] == "resolved" and alert["labels"]["instance"] == node.address
            assert alert["endsAt"] > alert["startsAt"]
    finally:
        hook.close()


@needs_binaries
def test_a_firing_alert_and_its_resolve_reach_the_mailbox(
    tmp_path: Path, loop_thread: LoopThread, targets: tuple[Stub, Stub]
) -> None:
    gateway, node = targets
    sink = SmtpSink()
    try:
        settings = ark_settings(
            tmp_path,
            gateway,
            node,
            f'alert_email = "ops@example.org"\nsmtp_smarthost = "{sink.address}"\nsmtp_from = "ark@example.org"\n',
        )
        rule = next(a for a in prometheus.alerts(settings) if a.name == ALERT)

        def mail(prefix: str) -> tuple[list[str], EmailMessage] | None:
            return next((m for m in list(sink.messages) if m[1]["Subject"].startswith(prefix)), None)

        with running(settings, tmp_path, loop_thread):
            node.down = True  # its scrapes answer 503: up == 0
            assert wait_until(lambda: mail(f"[FIRING:1] {ALERT}") is not None, 30, interval=0.1), (
                f"{[m['Subject'] for _, m in sink.messages]}\n{logs(tmp_path)}"
            )
            found = mail(f"[FIRING:1] {ALERT}")
            assert found is not None
            recipients, message = found
            assert recipients == ["ops@example.org"]
            assert message["To"] == "ops@example.org" and message["From"] == "ark@example.org"
            body = message.get_body(("html", "plain"))
            assert body is not None
            text = html.unescape(body.get_content())
            assert f"node on {node.address} cannot be scraped" in text and rule.runbook in text, text

            node.down = False
            assert wait_until(lambda: mail(f"[RESOLVED] {ALERT}") is not None, 30, interval=0.1), (
                f"{[m['Subject'] for _, m in sink.messages]}\n{logs(tmp_path)}"
            )
    finally:
        sink.close()


@pytest.mark.parametrize(
    ("smarthost", "require_tls"),
    [("127.0.0.1:25", False), ("localhost:25", False), ("[::1]:25", False), ("mail.example.org:587", None)],
)
def test_mail_to_a_relay_on_loopback_goes_without_starttls(
    tmp_path: Path, smarthost: str, require_tls: bool | None
) -> None:
    """Alertmanager requires STARTTLS unless told otherwise; a local relay (what the mailbox test above
    stands for) gets plain SMTP, anything else keeps Alertmanager's default."""
    config = tmp_path / "ark.toml"
    config.write_text(
        f'master_key = "{MASTER_KEY}"\n[monitor]\nalert_email = "ops@example.org"\nsmtp_smarthost = "{smarthost}"\n'
    )
    rendered = yaml.safe_load(prometheus.alertmanager_yml(load_settings(config_path=config, data_dir=tmp_path, env={})))
    assert rendered["global"].get("smtp_require_tls") is require_tls


def test_prometheus_and_alertmanager_in_containers_are_left_to_them(tmp_path: Path) -> None:
    """Beside the container bundle's Prometheus and Alertmanager, `ark up` runs only the exporters, and writes
    nothing into their folders (which belong to the containers' user)."""
    settings = load_settings(
        env={"ARK_DATA_DIR": str(tmp_path / "data"), "ARK_DEPLOY_CONTAINERS": "prometheus, alertmanager"}
    )
    started: list[str] = []

    class Recording:
        async def start(self, spec: Any) -> None:
            started.append(spec.name)

    report = asyncio.run(embedded.start(settings, Recording()))  # type: ignore[arg-type]
    assert not {"prometheus", "alertmanager"} & set(started)
    assert not (tmp_path / "data" / "monitor" / "prometheus").exists()
    assert not (tmp_path / "data" / "monitor" / "alertmanager").exists()
    contained = {r["name"]: r["why"] for r in report if "container" in r["why"]}
    assert contained == {n: "runs in its container ([deploy] containers)" for n in ("prometheus", "alertmanager")}
