"""The sections of the services ARK runs itself: the gateway, its database, the console, chat and monitoring."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from ark.config.declare import section, setting
from ark.config.network import NameList
from ark.config.types import Address, Bool, ByteSize, Choice, DatabaseUrl, Float, HostPort, Int, Str, Type


@section
class GatewaySettings:
    """The OpenAI-compatible API (docs/api.md): where it listens and the limits of its front door."""

    listen: Address = setting(
        HostPort(),
        "127.0.0.1:4000",
        "Address of the OpenAI-compatible API. Use 0.0.0.0:4000 to serve other machines (keys are always required).",
    )
    max_body_bytes: int = setting(ByteSize(), "8MiB", "Largest request body accepted; bigger ones get 413.")
    head_timeout_s: float = setting(
        Float(0.0, exclusive=True),
        30.0,
        "Seconds a client has to send a whole request head; a slower one gets 408 and is disconnected "
        "(nginx: client_header_timeout).",
    )
    write_timeout_s: float = setting(
        Float(0.0, exclusive=True),
        60.0,
        "Seconds a response may wait for the client to read more of it; then the connection is cut and what "
        "the request held (engine slot, GPU lease, budget reservation) is released (nginx: send_timeout).",
    )
    max_connections: int = setting(
        Int(1, 1_000_000),
        4096,
        "Client connections open at once, in all; one more is answered 503 too_many_connections and closed "
        "(uvicorn: limit_concurrency; nginx: worker_connections).",
    )
    max_connections_per_client: int = setting(
        Int(1, 1_000_000),
        256,
        "Client connections open at once from one address (an IPv6 /64); one more is answered 429 "
        "too_many_connections and closed. Nginx on this machine (127.0.0.1, ::1) is not limited by it.",
    )
    max_inflight: int = setting(
        Int(1, 100_000),
        256,
        "Requests served at once across all engines; more get 429 with Retry-After.",
    )
    log_prompts: bool = setting(
        Bool(),
        False,
        "Write prompt and completion text into the access log (off: only sizes and tokens).",
    )
    access_log: str = setting(
        Str(),
        "",
        'One JSON line per request. Empty: DATA/logs/access.jsonl; "-": standard output; "off": none.',
    )
    access_log_max_bytes: int = setting(
        ByteSize(),
        "100MiB",
        "The access log file is rotated when it reaches this size (access.jsonl -> access.jsonl.1 ...); 0: never.",
    )
    access_log_keep: int = setting(
        Int(0, 1000),
        5,
        "Rotated access log files kept (access.jsonl.1 is the newest); older ones are deleted.",
    )
    model_refresh_s: float = setting(
        Float(1.0),
        30.0,
        "How often the model list of each engine is refreshed (seconds); an unknown model also triggers a refresh.",
    )


@section
class StoreSettings:
    """The database of API keys, teams, budgets and the usage ledger (docs/keys.md)."""

    url: str = setting(
        DatabaseUrl(),
        "",
        "Where keys, teams and the usage ledger live. Empty: SQLite (WAL) at DATA/ark.db; "
        "postgresql://... to share them between gateway processes.",
    )
    retention_days: int = setting(
        Int(1, 100_000),
        90,
        "Days the ledger keeps one row per request; daily rollups are kept forever.",
    )
    shared: str = setting(
        Choice("auto", "yes", "no"),
        "auto",
        "Whether several gateway processes share this database and must enforce budgets and rate limits "
        "together (allotments in the database). auto: yes for PostgreSQL, no for SQLite.",
    )

    @property
    def is_shared(self) -> bool:
        """Several gateways enforce one budget together: allotments in the database."""
        scheme = urlsplit(self.url).scheme  # "postgresql", "postgres", "postgresql+psycopg"
        return self.shared == "yes" or (self.shared == "auto" and scheme.startswith("postgres"))


@section
class ConsoleSettings:
    """ARK's web console: the landing page, admin pages and the login that Nginx asks (docs/security.md)."""

    listen: Address = setting(
        HostPort(),
        "127.0.0.1:8080",
        "Address of ARK's web console and auth (login, /auth/verify); Nginx is in front of it.",
    )
    overview_sample_s: float = setting(
        Float(0.1, hi=300.0),
        5.0,
        "Seconds between two samples of the console's live overview (it keeps the last hour in memory).",
    )
    keys_per_person: int = setting(
        Int(0, 1000),
        5,
        "Keys each person may hold at once from the console's My keys page (0: people make no keys themselves).",
    )
    key_models: tuple[str, ...] = setting(
        NameList(),
        "",
        "Models a person's own keys may be limited to (a key made there names some of these, or gets all of "
        "them). Empty: any model the person may use.",
    )
    key_max_budget: float | None = setting(
        Float(0.0),
        None,
        "Largest budget a person may give one of their own keys (every key then has one). Unset: a key may "
        "have none; the person's own budget still applies to everything their keys spend.",
    )


@section
class AuthSettings:
    """Users, sessions and the identity Nginx passes on (docs/security.md)."""

    session_hours: float = setting(Float(0.0, exclusive=True), 12.0, "Hours a login session lasts.")
    max_failures: int = setting(
        Int(1, 1000),
        5,
        "Failed sign-ins allowed per user name and per client address before each further attempt must wait.",
    )
    lockout_s: float = setting(
        Float(0.0, exclusive=True),
        30.0,
        "Seconds to wait after max_failures failed sign-ins; doubled at each further failure, at most an hour.",
    )
    identity_ttl_s: int = setting(
        Int(10, 3600),
        300,
        "Lifetime of the signed X-Ark-Identity token that /auth/verify gives the sites behind Nginx "
        "(the gateway attributes usage to that user while it is valid).",
    )


@section
class MonitorSettings:
    """Prometheus, Alertmanager, the exporters and the alert thresholds (docs/monitoring.md)."""

    embedded: str = setting(
        Choice("auto", "yes", "no"),
        "auto",
        "Whether `ark up` starts Prometheus and node_exporter itself (on loopback, with the rendered configs). "
        "auto: when their Debian packages are installed; yes: fail when they are not.",
    )
    prometheus_listen: Address = setting(HostPort(), "127.0.0.1:9090", "Prometheus' address.")
    node_exporter_listen: Address = setting(HostPort(), "127.0.0.1:9100", "node_exporter's address.")
    gpu_exporter_listen: Address = setting(
        HostPort(),
        "127.0.0.1:9835",
        "The GPU exporter's address (`ark gpu exporter`).",
    )
    alertmanager_listen: Address = setting(HostPort(), "127.0.0.1:9093", "Alertmanager's address.")
    retention: str = setting(Str(), "30d", "How long Prometheus keeps samples (its --storage.tsdb.retention.time).")
    scrape_interval_s: int = setting(Int(1, 3600), 15, "Seconds between two scrapes of every target.")
    alert_webhook_url: str = setting(
        Str(),
        "",
        "Where Alertmanager posts alerts (e.g. an n8n webhook); empty: no webhook receiver.",
    )
    alert_email: str = setting(Str(), "", "Address alerts are mailed to; empty: no mail.")
    smtp_smarthost: str = setting(Str(), "", "SMTP server for alert mail, HOST:PORT.")
    smtp_from: str = setting(Str(), "", "Sender address of alert mail.")
    gpu_temperature_c: float = setting(Float(0.0), 85.0, "Alert when a GPU is hotter than this for 5 minutes.")
    vram_full_ratio: float = setting(
        Float(0.0, hi=1.0),
        0.95,
        "Alert when GPU memory is fuller than this for 5 minutes.",
    )
    queue_wait_p95_s: float = setting(
        Float(0.0),
        30.0,
        "Alert when the 95th percentile of GPU queue waits exceeds this.",
    )
    error_ratio: float = setting(
        Float(0.0, hi=1.0),
        0.05,
        "Alert when more than this share of API requests fail (5xx).",
    )
    budget_ratio: float = setting(
        Float(0.0, hi=1.0),
        0.9,
        "Alert when a key has spent more than this share of its budget.",
    )
    disk_ratio: float = setting(Float(0.0, hi=1.0), 0.85, "Alert when the data volume is fuller than this.")
    certificate_days: int = setting(Int(1, 365), 14, "Alert when a certificate expires within this many days.")
    certificates: str = setting(
        Str(),
        "",
        "Certificate files (comma-separated globs) whose expiry the gateway exports as "
        "ark_certificate_expiry_timestamp_seconds; empty: those `ark certs letsencrypt` keeps "
        "(DATA/certbot/config/live/*/cert.pem).",
    )


@section
class ChatSettings:
    """Open WebUI and ChromaDB, run by `ark up` and wired through the gateway (docs/chat.md)."""

    open_webui: str = setting(
        Choice("auto", "yes", "no"),
        "auto",
        "Whether `ark up` runs Open WebUI (with ChromaDB beside it for its documents). auto: when installed "
        "(`ark services install open-webui`); yes: report it failed when it is not; no: never.",
    )
    open_webui_listen: Address = setting(
        HostPort(), "127.0.0.1:3000", "Open WebUI's address (loopback: Nginx serves it at chat.DOMAIN)."
    )
    chroma_listen: Address = setting(HostPort(), "127.0.0.1:8000", "ChromaDB's address.")
    services_dir: str = setting(
        Str(),
        "",
        "Where `ark services install` puts each service's own virtual environment (one folder per pinned "
        "version, shared by every ARK on the machine that points here). Empty: DATA/services.",
    )
    embedding_model: str = setting(
        Str(),
        "smollm2-135m-instruct",
        "The model Open WebUI embeds documents with, through the gateway (RAG); the embedded engine's "
        "bundled model by default.",
    )
    builtin_tools: bool = setting(
        Bool(),
        False,
        "Let Open WebUI give models its ~28 built-in tools (notes, chat search, knowledge...) in every chat. Off: "
        "their definitions are not sent (thousands of prompt tokens a message, more than small models' context).",
    )
    name: str = setting(Str(), "ARK Chat", "The name Open WebUI shows (its WEBUI_NAME).")


@section
class AutomationSettings:
    """n8n, run by `ark up` on loopback with a gateway key of its own (docs/automation.md)."""

    n8n: str = setting(
        Choice("auto", "yes", "no"),
        "auto",
        "Whether `ark up` runs n8n. auto: when installed (`ark services install n8n`); yes: report it failed when "
        "it is not; no: never.",
    )
    n8n_listen: Address = setting(HostPort(), "127.0.0.1:5678", "n8n's address (loopback: Nginx serves n8n.DOMAIN).")
    model: str = setting(
        Str(),
        "smollm2-135m-instruct",
        "The model n8n's workflows ask by default (ARK_MODEL in n8n's environment; the bundled one by default).",
    )
    workflows_dir: str = setting(
        Str(),
        "",
        "n8n workflows (exported JSON, one per file) imported at each start of n8n, and activated when their "
        'file says "active": true. Empty: DATA/n8n-workflows.',
    )


@section
class BackupSettings:
    """`ark backup` and `ark restore`, and the backups ARK makes on its own (docs/backup.md)."""

    dir: str = setting(Str(), "", "Where backups go. Empty: DATA/backups.")
    keep: int = setting(Int(1, 10000), 7, "Backups kept in that folder; older ones are deleted after each new one.")
    every_hours: float = setting(
        Float(0.0, hi=8784.0),
        0.0,
        "`ark up` makes a backup this often (hours), in its own process at low priority. 0: never (run "
        "`ark backup` from cron or a systemd timer instead).",
    )
    passphrase_file: str = setting(
        Str(),
        "",
        "A file holding the passphrase that seals the secrets in scheduled backups (mode 0600). Empty: the "
        "secrets are kept unsealed, in an archive only root can read.",
    )
    media: bool = setting(Bool(), True, "Whether scheduled backups keep media (generated images, recordings).")
    s3_bucket: str = setting(
        Str(),
        "",
        "A bucket of an S3-compatible store that gets a copy of every backup, `ark backup`'s and the scheduled "
        "ones (docs/backup.md). Empty: no copies.",
    )
    s3_prefix: str = setting(Str(), "", 'Folder of the copies in the bucket ("ark/box1": s3://BUCKET/ark/box1/...).')
    s3_endpoint: str = setting(
        Str(),
        "",
        'The store\'s http(s) URL (MinIO, Garage, Ceph: "https://s3.example.org:9000"). Empty: AWS S3.',
    )
    s3_region: str = setting(Str(), "us-east-1", "The store's region (the one requests are signed for).")
    s3_access_key_id: str = setting(
        Str(),
        "",
        "The access key id. Empty: boto3's own search (AWS_* variables, ~/.aws, an EC2 instance role).",
    )
    s3_secret_access_key_file: str = setting(
        Str(),
        "",
        "A file holding the secret access key (its first line; mode 0600: a file others may read is refused).",
    )
    s3_keep: int = setting(
        Int(0, 10000),
        0,
        "Copies kept in the bucket; older ones are deleted after each upload. 0: as many as `keep`.",
    )


# The services of the container bundle (ark/deploy/compose.py), and those a box runs by default
CONTAINERS = ("open-webui", "chromadb", "comfyui", "prometheus", "alertmanager", "grafana", "n8n", "ark")
REFERENCE_CONTAINERS = CONTAINERS[:-1]  # the reference box's (docs/deploy.md); opt-in: the default is none
# registry[:port]/path:tag@sha256:digest, as Docker parses it; only the characters that can be in one
_IMAGE = re.compile(
    r"(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)


class ContainerList(NameList):
    """Names of the container bundle's services, as an array or comma-separated text, or empty."""

    expected = f"service names among {', '.join(CONTAINERS)} (an array or comma-separated text), or empty"

    def item(self, text: str) -> str:
        if text not in CONTAINERS:
            raise ValueError(text)
        return text


class ImageRefs(Type[dict[str, str]]):
    """``service=image`` pairs or a table: an image reference with a tag or a digest, per known service."""

    expected = (
        'service=image pairs such as "grafana=grafana/grafana:12.3.1" (or a table); '
        f"services: {', '.join(CONTAINERS)}; each image with a :tag or an @sha256: digest"
    )

    def parse(self, value: Any) -> dict[str, str]:
        if isinstance(value, str):
            pairs = [part.partition("=") for part in value.split(",") if part.strip()]
            if any(not sep for _, sep, _ in pairs):
                raise self.fail()
            value = {name.strip(): ref.strip() for name, _, ref in pairs}
        if not isinstance(value, dict):
            raise self.fail()
        for name, ref in value.items():
            pinned = isinstance(ref, str) and (":" in ref.rpartition("/")[2] or "@" in ref)
            if name not in CONTAINERS or not pinned or not _IMAGE.fullmatch(ref):
                raise self.fail()
        return {str(name): str(ref) for name, ref in value.items()}


@section
class DeploySettings:
    """How `ark render` lays ARK out as a service of the box (docs/deploy.md)."""

    user: str = setting(Str(), "ark", "The system user ark.service runs as (it owns the data directory).")
    containers: tuple[str, ...] = setting(
        ContainerList(),
        "",
        "The services `ark render` puts in its container bundle, compose/docker-compose.yml (docs/deploy.md): "
        f"{', '.join(CONTAINERS)} (ARK itself). Empty (the default): no container bundle; the reference box "
        f'runs "{", ".join(REFERENCE_CONTAINERS)}". A service named here must not also be run by `ark up` '
        '(open_webui, n8n or embedded = "yes", or comfyui_path without comfyui_url, is refused).',
    )
    images: Mapping[str, str] = setting(
        ImageRefs(),
        "",
        'Image references that replace the pinned ones, per service ("grafana=grafana/grafana:12.3.1", or a '
        "table); each with a tag or a digest. A tag's digest from DATA/images.lock.json is still added.",
    )
