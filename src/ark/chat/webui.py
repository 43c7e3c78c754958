"""Open WebUI's and ChromaDB's whole configuration, written from ``ark.toml`` into their environment.

ARK is the single source of truth: ``ENABLE_PERSISTENT_CONFIG=false`` makes Open WebUI take every value
from its environment at each start (otherwise values saved in its database win over it, silently).
Chat goes to the gateway with a service key (``trust_user_headers``) and Open WebUI forwards who asks
(``X-OpenWebUI-User-Email``), so each person's chats are charged to them; people sign in through the
headers Nginx sets from ARK's session (``X-Trusted-Email``, ``X-Trusted-Name``, ``X-Ark-Role``); nothing is
fetched from the internet and nothing reports home. Pure functions: the component passes them what it knows.
"""

from __future__ import annotations

from pathlib import Path

from ark.config import Settings
from ark.config.types import Address

# The headers Nginx sets on chat.DOMAIN from the console's /auth/verify (ark/edge/sites.py IDENTITY_HEADERS)
EMAIL_HEADER = "X-Trusted-Email"
NAME_HEADER = "X-Trusted-Name"
ROLE_HEADER = "X-Ark-Role"  # "admin" or "user": Open WebUI's roles of the same names


local = Address.local  # host:port to reach a listener on this machine (a wildcard address on loopback)


def open_webui_env(settings: Settings, service_key: str, secret_key: str) -> dict[str, str]:
    """Open WebUI's environment: ``service_key`` is its gateway key, ``secret_key`` signs its sessions."""
    chat = settings.chat
    gateway = f"http://{local(settings.gateway.listen)}/v1"
    chroma = settings.chat.chroma_listen
    data = settings.data_dir / "open-webui"
    return {
        # ark.toml is the only source: nothing Open WebUI stored in its database overrides it
        "ENABLE_PERSISTENT_CONFIG": "false",
        "DATA_DIR": str(data),
        "WEBUI_SECRET_KEY": secret_key,
        "WEBUI_NAME": chat.name,
        "WEBUI_URL": f"https://chat.{settings.edge.domain}" if settings.edge.domain else "",
        # chat through the gateway only: its keys, budgets, aliases, ledger and GPU arbiter
        "ENABLE_OPENAI_API": "true",
        "OPENAI_API_BASE_URLS": gateway,
        "OPENAI_API_KEYS": service_key,
        "ENABLE_OLLAMA_API": "false",
        "OLLAMA_BASE_URL": gateway.removesuffix("/v1"),  # set, so that it never probes :11434 at start
        "ENABLE_FORWARD_USER_INFO_HEADERS": "true",  # the gateway charges each person their own chats
        "BYPASS_MODEL_ACCESS_CONTROL": "true",  # the gateway decides who may use which model
        # "legacy" function calling: no built-in tool definitions in every request unless [chat] builtin_tools
        "DEFAULT_MODEL_PARAMS": "{}" if chat.builtin_tools else '{"function_calling": "legacy"}',
        # sign-in: the headers Nginx sets from ARK's session; ARK's role wins at each sign-in
        "WEBUI_AUTH": "true",
        "ENABLE_PASSWORD_AUTH": "true",  # Open WebUI's trusted-header sign-in goes through it
        "WEBUI_AUTH_TRUSTED_EMAIL_HEADER": EMAIL_HEADER,
        "WEBUI_AUTH_TRUSTED_NAME_HEADER": NAME_HEADER,
        "WEBUI_AUTH_TRUSTED_ROLE_HEADER": ROLE_HEADER,
        "DEFAULT_USER_ROLE": "user",
        "ENABLE_SIGNUP": "false",
        "ENABLE_API_KEYS": "false",
        # documents: embedded through the gateway, vectors in ARK's ChromaDB
        "RAG_EMBEDDING_ENGINE": "openai",
        "RAG_OPENAI_API_BASE_URL": gateway,
        "RAG_OPENAI_API_KEY": service_key,
        "RAG_EMBEDDING_MODEL": chat.embedding_model,
        "RAG_EMBEDDING_BATCH_SIZE": "16",  # one gateway request for up to 16 chunks (its default is one each)
        # a document's search query is the person's question: no extra model call on the shared GPU per message
        "ENABLE_RETRIEVAL_QUERY_GENERATION": "false",
        "RAG_EMBEDDING_MODEL_AUTO_UPDATE": "false",
        "RAG_RERANKING_MODEL_AUTO_UPDATE": "false",
        "VECTOR_DB": "chroma",
        "CHROMA_HTTP_HOST": local(chroma).rpartition(":")[0].strip("[]"),
        "CHROMA_HTTP_PORT": str(chroma.port),
        # offline, and nothing reported anywhere
        "OFFLINE_MODE": "true",
        "HF_HUB_OFFLINE": "1",
        "ENABLE_VERSION_UPDATE_CHECK": "false",
        "ENABLE_COMMUNITY_SHARING": "false",
        "ENABLE_WEB_SEARCH": "false",
        "DO_NOT_TRACK": "true",
        "SCARF_NO_ANALYTICS": "true",
        "ANONYMIZED_TELEMETRY": "false",
        "HF_HOME": str(data / "cache" / "huggingface"),
        "FORWARDED_ALLOW_IPS": "127.0.0.1",  # only Nginx on this machine may say who the client is
        "UVICORN_WORKERS": "1",
        **_images(settings, gateway, service_key),
    }


def _images(settings: Settings, gateway: str, service_key: str) -> dict[str, str]:
    """Image generation through the gateway's /v1/images/generations, each person's images charged to them
    (the same forwarded headers as chat), when ARK has a ComfyUI; the person's message is the prompt (no
    extra model call to write one). Editing is off: ARK serves no /v1/images/edits."""
    models = settings.image_models
    if not settings.images.comfyui() or not models:
        return {"ENABLE_IMAGE_GENERATION": "false", "ENABLE_IMAGE_EDIT": "false"}
    return {
        "ENABLE_IMAGE_GENERATION": "true",
        "IMAGE_GENERATION_ENGINE": "openai",
        "IMAGES_OPENAI_API_BASE_URL": gateway,
        "IMAGES_OPENAI_API_KEY": service_key,
        "IMAGE_GENERATION_MODEL": models[0].id,
        "IMAGE_SIZE": models[0].size,
        "ENABLE_IMAGE_PROMPT_GENERATION": "false",
        "ENABLE_IMAGE_EDIT": "false",
    }


def chroma_env() -> dict[str, str]:
    return {"ANONYMIZED_TELEMETRY": "False", "CHROMA_TELEMETRY": "false"}


def chroma_path(settings: Settings) -> Path:
    return settings.data_dir / "chroma"
