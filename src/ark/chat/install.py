"""`ark services install open-webui`: Open WebUI (with ChromaDB) in a virtual environment of its own.

Open WebUI pins about ninety packages; they stay out of ARK's environment, in
``SERVICES/open-webui-VERSION/venv`` (``[chat] services_dir``, DATA/services by default), one folder per
pinned version, so that a machine keeps one copy whatever data directories use it.

What it costs is kept as small as the package allows: ``sentence-transformers`` and ``accelerate`` are left
out. They pull PyTorch, and from PyPI that is a multi-GB CUDA build, for what Open WebUI uses only to run
embedding, reranking and speech models itself; under ARK its embeddings go through the gateway instead
(``RAG_EMBEDDING_ENGINE=openai``). Everything else Open WebUI requires is installed at its pinned version.
The environment counts as installed once a marker file is written, last; an interrupted install is
finished by running it again.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ark.config import Settings
from ark.supervisor.installs import InstallError, Progress, run_step, services_dir

OPEN_WEBUI_VERSION = "0.12.4"
# Open WebUI's requirements ARK leaves out, and why (see the module's docstring)
LEFT_OUT = {
    "sentence-transformers": "local embedding models (PyTorch); ARK embeds through the gateway",
    "accelerate": "local models on PyTorch",
}
_MARKER = ".ark-installed"
_PIP_ENV = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONUNBUFFERED": "1"}
_EXPECTED_PACKAGES = 260  # what the install resolves to, for the progress bar (it says when it knows)


@dataclass(frozen=True)
class Installed:
    root: Path  # SERVICES/open-webui-VERSION
    version: str

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    @property
    def open_webui(self) -> Path:
        return self.venv / "bin" / "open-webui"

    @property
    def chroma(self) -> Path:
        return self.venv / "bin" / "chroma"


def location(settings: Settings, version: str = OPEN_WEBUI_VERSION) -> Installed:
    return Installed(services_dir(settings) / f"open-webui-{version}", version)


def installed(settings: Settings) -> Installed | None:
    """The pinned version's environment when its install finished, else None."""
    place = location(settings)
    return place if (place.root / _MARKER).is_file() and place.open_webui.is_file() else None


def requirements(requires: list[str]) -> list[str]:
    """Open WebUI's requirements (its metadata's Requires-Dist) less extras and :data:`LEFT_OUT`."""
    out = []
    for line in requires:
        requirement, _, marker = line.partition(";")
        if "extra" in marker:
            continue
        name = re.split(r"[\s\[<>=!~(]", requirement.strip(), maxsplit=1)[0]
        if name.lower().replace("_", "-") in LEFT_OUT:
            continue
        out.append(line.strip())
    return out


def install(settings: Settings, progress: Progress, python: str = sys.executable) -> Installed:
    """Create (or finish) the pinned version's environment; returns where it is."""
    if sys.version_info[:2] not in ((3, 11), (3, 12)):
        raise InstallError(f"Open WebUI {OPEN_WEBUI_VERSION} needs Python 3.11 or 3.12, not {sys.version.split()[0]}")
    place = location(settings)
    if installed(settings) is not None:
        progress("already installed", 1, 1)
        return place
    place.root.mkdir(parents=True, exist_ok=True)
    pip = [str(place.venv / "bin" / "python"), "-m", "pip", "install", "--no-input"]
    progress("creating its virtual environment", 0, None)
    run_step("creating the virtual environment", [python, "-m", "venv", str(place.venv)], env=_PIP_ENV)
    progress(f"installing open-webui {OPEN_WEBUI_VERSION}", 0, None)
    run_step("installing open-webui", [*pip, "--no-deps", f"open-webui=={OPEN_WEBUI_VERSION}"], env=_PIP_ENV)
    query = "import importlib.metadata as m, json; print(json.dumps(m.requires('open-webui') or []))"
    listed = subprocess.run(
        [str(place.venv / "bin" / "python"), "-c", query], capture_output=True, text=True, check=True
    )
    wanted = requirements(json.loads(listed.stdout))
    (place.root / "requirements.txt").write_text("\n".join(wanted) + "\n")
    seen = 0

    def count(line: str) -> None:
        nonlocal seen
        if line.startswith("Collecting "):
            seen += 1
            progress(f"resolving {line.split()[1]}", seen, max(seen, _EXPECTED_PACKAGES))
        elif line.startswith("Installing collected packages:"):
            packages = line.split(":", 1)[1].count(",") + 1
            progress(f"installing {packages} packages", seen, seen)

    requirements_file = str(place.root / "requirements.txt")
    run_step("installing Open WebUI's requirements", [*pip, "-r", requirements_file], count, env=_PIP_ENV)
    (place.root / _MARKER).write_text(OPEN_WEBUI_VERSION + "\n")
    progress("installed", 1, 1)
    return place
