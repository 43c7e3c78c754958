"""Inference engines behind one interface (:class:`ark.engines.base.Engine`)."""

from __future__ import annotations

from ark.config import EngineSettings, Settings
from ark.engines.base import Engine


def build_engine(settings: EngineSettings) -> Engine:
    # Imported on demand: an engine kind nobody configured costs nothing at start-up.
    if settings.kind == "ollama":
        from ark.engines.ollama import OllamaEngine

        return OllamaEngine(settings)
    if settings.kind == "openai":
        from ark.engines.openai import OpenAIEngine

        return OpenAIEngine(settings)
    from ark.engines.embedded import EmbeddedEngine

    return EmbeddedEngine(settings)


def build_engines(settings: Settings) -> list[Engine]:
    return [build_engine(e) for e in settings.engines]


__all__ = ["Engine", "build_engine", "build_engines"]
