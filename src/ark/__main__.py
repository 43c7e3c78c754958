from __future__ import annotations

from ark.cli.main import main

main()
