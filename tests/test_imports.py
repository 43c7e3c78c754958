"""Each package that others build on imports on its own, in a fresh interpreter: a cycle between them (the
runtime importing the console, the console the edge, the edge a service's code that imports the runtime) works
from one entry point and fails from another."""

from __future__ import annotations

import subprocess
import sys

import pytest

ENTRIES = ("ark.runtime", "ark.console", "ark.edge", "ark.store", "ark.deploy.compose", "ark.backup", "ark.doctor")


@pytest.mark.parametrize("module", ENTRIES)
def test_a_package_imports_on_its_own(module: str) -> None:
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
