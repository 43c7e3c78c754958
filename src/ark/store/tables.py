"""The database schema (SQLAlchemy Core). Changes go through a new Alembic revision in migrations/."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()


def _limits() -> list[Column[object]]:
    """Budget and rate-limit columns that keys and teams share."""
    return [
        Column("models", JSON, nullable=False, default=list),  # empty: every model
        Column("max_budget", Float),  # credits per budget period; NULL: no credit budget
        Column("budget_duration", String(16)),  # "1d", "30d"...; NULL: the budget never resets
        Column("budget_reset_at", DateTime(timezone=True)),
        Column("max_tokens_budget", BigInteger),  # tokens per budget period; NULL: none
        Column("spend", Float, nullable=False, default=0.0),  # in the current period
        Column("tokens_used", BigInteger, nullable=False, default=0),  # in the current period
        Column("tpm_limit", Integer),
        Column("rpm_limit", Integer),
        Column("max_parallel_requests", Integer),
        Column("blocked", Boolean, nullable=False, default=False),
        Column("metadata", JSON, nullable=False, default=dict),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
    ]


teams = Table(
    "teams",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("alias", String(256)),
    *_limits(),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(64), primary_key=True),  # sha256 of the key, hex: the key itself is never stored
    Column("key_prefix", String(16), nullable=False),  # "sk-ark-ab12", to recognise a key in lists
    Column("key_alias", String(256)),
    Column("user_id", String(256)),  # the owner, usually an e-mail address
    Column("team_id", String(64), ForeignKey("teams.id", ondelete="RESTRICT")),
    Column("expires_at", DateTime(timezone=True)),
    *_limits(),
    # an application's service key (Open WebUI's): its requests are charged to the person its
    # X-OpenWebUI-User-Email header names; 0004
    Column("trust_user_headers", Boolean, nullable=False, default=False),
)
Index("ix_api_keys_key_alias", api_keys.c.key_alias)
Index("ix_api_keys_team_id", api_keys.c.team_id)

usage = Table(
    "usage",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("request_id", String(40), nullable=False, unique=True),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("key_id", String(64)),  # NULL: the master key
    Column("key_alias", String(256)),
    Column("team_id", String(64)),
    Column("user_id", String(256)),
    Column("path", String(64), nullable=False),
    Column("model_requested", String(256)),
    Column("model_served", String(256)),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("cost", Float, nullable=False, default=0.0),
    Column("status", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("ttft_ms", Float),
    Column("person", String(254)),  # whom a UI called for (X-Ark-Identity, a trusted header); 0003, 254: 0004
    Column("person_id", String(32)),  # that user's id, whose budget was charged (users.id); 0004
    Column("kind", String(16), nullable=False, server_default="text"),  # text or image; 0005
    Column("images", Integer, nullable=False, server_default="0"),  # images made; 0005
)
Index("ix_usage_time", usage.c.time)
Index("ix_usage_key_time", usage.c.key_id, usage.c.time)

usage_daily = Table(
    "usage_daily",
    metadata,
    Column("day", Date, primary_key=True),
    Column("key_id", String(64), primary_key=True),  # "" for the master key
    Column("model", String(256), primary_key=True),
    Column("team_id", String(64)),
    Column("requests", BigInteger, nullable=False, default=0),
    Column("prompt_tokens", BigInteger, nullable=False, default=0),
    Column("completion_tokens", BigInteger, nullable=False, default=0),
    Column("cost", Float, nullable=False, default=0.0),
)

# -- several gateways on one database (scale-out): see ark/store/allotments.py -----------------------
gateways = Table(
    "gateways",
    metadata,
    Column("holder", String(64), primary_key=True),  # the process's journal name: "20261127T101500-1234-ab12cd"
    Column("host", String(256), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("heartbeat", Float, nullable=False),  # Unix time
)

allotments = Table(
    "holds",  # named before the word allotment was: renaming the table takes a migration, so it stays
    metadata,
    Column("holder", String(64), primary_key=True),
    Column("subject", String(80), primary_key=True),  # "key:ID" or "team:ID"
    Column("cost", Float, nullable=False, default=0.0),  # credits reserved or spent, not yet in `spend`
    Column("tokens", BigInteger, nullable=False, default=0),  # the same for the token budget
    Column("slots", Integer, nullable=False, default=0),  # requests at once
)
Index("ix_holds_subject", allotments.c.subject)

rate_buckets = Table(
    "rate_buckets",
    metadata,
    Column("subject", String(80), primary_key=True),
    Column("requests", Float, nullable=False),  # the rpm bucket's level
    Column("tokens", Float, nullable=False),  # the tpm bucket's level (may be negative: debt)
    Column("stamp", Float, nullable=False),  # Unix time of the last refill
)

# -- people: console users and their sessions (ark/auth/users.py); 0003 --------------------------------
users = Table(
    "users",
    metadata,
    Column("id", String(32), primary_key=True),  # random hex; what sessions and identity tokens name
    Column("name", String(64), nullable=False, unique=True),  # the sign-in name, lower case
    Column("email", String(254), nullable=False, unique=True),  # Open WebUI keys its accounts by it
    Column("display_name", String(128), nullable=False),
    Column("role", String(16), nullable=False),  # "admin" or "user"
    Column("password_hash", String(256), nullable=False),  # argon2id, PHC string
    Column("totp_secret", String(64)),  # base32; NULL: no second factor
    Column("totp_last_step", BigInteger),  # the last TOTP step accepted: it and older ones are refused
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

user_sessions = Table(
    "user_sessions",
    metadata,
    Column("id", String(64), primary_key=True),  # sha256 of the cookie's token: a leaked table signs nobody in
    Column("user_id", String(32), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("client", String(64)),  # the address it signed in from
    Column("user_agent", String(256)),
)
Index("ix_user_sessions_user_id", user_sessions.c.user_id)

# A person's budget and limits, as a key's (ark/store/keys.py, Person); no row: no limits; 0004
user_limits = Table(
    "user_limits",
    metadata,
    Column("id", String(32), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    *_limits(),
)
Index("ix_user_sessions_expires_at", user_sessions.c.expires_at)

# ARK's events waiting for (or done with) delivery to each webhook: the outbox (ark.events; 0006)
webhook_outbox = Table(
    "webhook_outbox",
    metadata,
    Column("id", String(40), primary_key=True),  # the delivery's webhook-id ("msg_..."): the same on every retry
    Column("webhook", String(64), nullable=False),  # [webhooks.NAME]
    Column("type", String(64), nullable=False),  # key.created, budget.threshold...
    Column("dedupe", String(200)),  # one event of this key per webhook (a threshold crossed once a period)
    Column("body", Text, nullable=False),  # the JSON sent, as signed
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("state", String(12), nullable=False),  # pending, delivered, dead
    Column("attempts", Integer, nullable=False),
    Column("next_at", DateTime(timezone=True), nullable=False),  # when a pending one is next sent
    Column("lease_until", DateTime(timezone=True)),  # a process sending it now (others leave it until then)
    Column("last_status", Integer),  # the receiver's last HTTP status; NULL: no answer
    Column("last_error", String(500)),
    Column("delivered_at", DateTime(timezone=True)),
    UniqueConstraint("webhook", "dedupe", name="uq_webhook_outbox_dedupe"),
)
Index("ix_webhook_outbox_due", webhook_outbox.c.state, webhook_outbox.c.next_at)
