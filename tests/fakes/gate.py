"""Holds an engine worker at its start until the test opens the gate: ``gate.py GATE_DIR COMMAND...``.

Used as an embedded engine's ``worker_prefix``: it writes ``GATE_DIR/held-PID`` and waits until
``GATE_DIR/open`` exists, then becomes COMMAND (exec: the same process, the same pid). A test kills it
while it is held to kill a worker in the middle of a load, at a moment it chose, not one it raced for.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def main() -> None:
    gate, command = Path(sys.argv[1]), sys.argv[2:]
    (gate / f"held-{os.getpid()}").touch()
    while not (gate / "open").exists():
        time.sleep(0.01)  # a file, not a pipe: the test may open it before or after this starts
    os.execv(command[0], command)  # noqa: S606 (a program path from the test itself)


if __name__ == "__main__":
    main()
