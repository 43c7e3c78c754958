"""Chat: Open WebUI and ChromaDB run by `ark up`, every chat through the gateway and counted to its person."""

from ark.chat.component import Chat

__all__ = ["Chat"]
