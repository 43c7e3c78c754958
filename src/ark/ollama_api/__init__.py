"""The Ollama-compatible API on the gateway: Ollama's routes and shapes over ARK's engines, keys and budgets."""

from ark.ollama_api.component import OLLAMA_VERSION, OllamaApi

__all__ = ["OLLAMA_VERSION", "OllamaApi"]
