"""The images of the container bundle: the pinned references, their digests once pulled, the operator's own.

Every image is pinned by version: Open WebUI, ChromaDB and n8n at the versions ARK installs itself
(ark/chat/install.py, ark/automation/install.py), the others here. ``DATA/images.lock.json`` holds
``{"name:tag": "sha256:..."}``, filled by `ark deploy apply` from what it pulled
(:func:`record_digests`); a reference the lock knows is written ``name:tag@sha256:...``. No digest is ever
made up: a tag the lock does not know is written as it is. ``[deploy] images`` replaces a service's
reference outright (the lock still pins its tag). ComfyUI and ARK are built here: no registry digest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import ark
from ark.automation.install import N8N_VERSION
from ark.chat.install import OPEN_WEBUI_VERSION
from ark.config import Settings
from ark.edge.files import write_atomic
from ark.errors import EdgeError

LOCK_FILE = "images.lock.json"
CHROMADB_VERSION = "1.5.9"  # what open-webui==OPEN_WEBUI_VERSION requires (Requires-Dist: chromadb==1.5.9)
PROMETHEUS_VERSION = "3.7.3"
ALERTMANAGER_VERSION = "0.28.1"
GRAFANA_VERSION = "12.3.1"
COMFYUI_VERSION = "v0.5.1"  # a release tag of github.com/comfyanonymous/ComfyUI
TORCH_IMAGE = "pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime"  # CUDA 12.8: Blackwell (RTX 50) and older

PINNED = {
    "open-webui": f"ghcr.io/open-webui/open-webui:v{OPEN_WEBUI_VERSION}",
    "chromadb": f"chromadb/chroma:{CHROMADB_VERSION}",
    "comfyui": f"ark-local/comfyui:{COMFYUI_VERSION}",  # built from the bundle's Dockerfile
    "prometheus": f"prom/prometheus:v{PROMETHEUS_VERSION}",
    "alertmanager": f"prom/alertmanager:v{ALERTMANAGER_VERSION}",
    "grafana": f"grafana/grafana:{GRAFANA_VERSION}",
    "n8n": f"docker.n8n.io/n8nio/n8n:{N8N_VERSION}",
    "ark": f"ark-local/ark:{ark.__version__}",  # built from the repository's Dockerfile
}
BUILT = ("comfyui", "ark")  # images built here: no registry digest to lock

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def images_lock_path(settings: Settings) -> Path:
    return settings.data_dir / LOCK_FILE


def read_lock(settings: Settings) -> dict[str, str]:
    """``{"name:tag": "sha256:..."}`` from DATA/images.lock.json ({} before the first pull)."""
    path = images_lock_path(settings)
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise EdgeError(f"{path}: not an image lock ARK wrote ({exc}); delete it to pull and lock again") from None
    if not isinstance(found, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and _DIGEST.fullmatch(v) for k, v in found.items()
    ):
        raise EdgeError(f'{path}: expected {{"name:tag": "sha256:..."}}; delete it to pull and lock again')
    return found


def _with_digest(ref: str, lock: Mapping[str, str]) -> str:
    return ref if "@" in ref or ref not in lock else f"{ref}@{lock[ref]}"


def images(settings: Settings) -> dict[str, str]:
    """Service -> image reference as the compose file has it: ``[deploy] images`` or the pin, with the
    digest DATA/images.lock.json has for it (images built here have none)."""
    lock = read_lock(settings)
    found = {}
    for name in settings.deploy.containers:
        ref = settings.deploy.images.get(name, PINNED[name])
        found[name] = ref if name in BUILT else _with_digest(ref, lock)
    return found


def record_digests(settings: Settings, digests: Mapping[str, str]) -> bool:
    """Lock the digests `ark deploy apply` read after a pull: by service name or image reference, each
    ``sha256:...`` (or ``name@sha256:...``, as ``docker image inspect`` gives RepoDigests). True when the lock
    changed. Built images and references that already carry a digest are not locked."""
    refs = {name: ref for name, ref in images(settings).items() if name not in BUILT}
    built = {settings.deploy.images.get(name, PINNED[name]) for name in BUILT}
    lock = read_lock(settings)
    new = dict(lock)
    for key, value in digests.items():
        ref = refs.get(key, key)
        digest = value.rpartition("@")[2]
        tagged = ":" in ref.rpartition("/")[2] and "@" not in ref
        if key in BUILT or ref in built or not tagged or not _DIGEST.fullmatch(digest):
            continue
        new[ref] = digest
    if new == lock:
        return False
    text = json.dumps(dict(sorted(new.items())), indent=2) + "\n"
    return write_atomic(images_lock_path(settings), text.encode())


def comfyui_dockerfile(settings: Settings, user: tuple[int, int]) -> str:
    base = _with_digest(TORCH_IMAGE, read_lock(settings))
    uid, gid = user
    return "\n".join(
        [
            f"# ComfyUI {COMFYUI_VERSION} on {TORCH_IMAGE}, rendered by `ark render` (docs/deploy.md)",
            f"FROM {base}",
            "RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*",
            "# its requirements with the image's CUDA build of PyTorch kept (a constraint pip must honour)",
            f"RUN git clone --depth 1 --branch {COMFYUI_VERSION} https://github.com/comfyanonymous/ComfyUI.git "
            "/opt/comfyui \\",
            "    && python -c \"import torch; print('torch==' + torch.__version__)\" > /tmp/torch.txt \\",
            "    && pip install --no-cache-dir -c /tmp/torch.txt -r /opt/comfyui/requirements.txt \\",
            "    && rm /tmp/torch.txt",
            f"RUN groupadd --gid {gid} comfyui && useradd --uid {uid} --gid {gid} --no-create-home comfyui",
            "ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1",
            "WORKDIR /opt/comfyui",
            f"USER {uid}:{gid}",
            'ENTRYPOINT ["python", "main.py"]',
            "",
        ]
    )
