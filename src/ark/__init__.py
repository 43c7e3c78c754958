"""ARK: a single-machine AI operations platform.

The public surface is small: :func:`ark.config.load_settings` builds the
settings, :func:`ark.gateway.create_app` builds the OpenAI-compatible gateway
from them, and ``ark`` (``ark.cli.main``) is the command line.
"""

from __future__ import annotations

__version__ = "0.1.0"
