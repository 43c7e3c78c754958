"""ARK: a single-machine AI operations platform.

The public surface is small: :func:`ark.config.load_settings` builds the
settings, :func:`ark.runtime.serve` runs ARK from them (the runtime and the
components it lists), and ``ark`` (``ark.cli.main``) is the command line.
"""

from __future__ import annotations

__version__ = "0.1.0"
