from __future__ import annotations

from ark.cli import main

main()
