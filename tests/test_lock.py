"""Reproducible installs: the lock files pin every dependency pyproject.toml declares (and theirs) with the
SHA-256 of each file, and pip, as scripts/install runs it, refuses a file that changed under its pin."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
BUILT_HERE = {"llama-cpp-python"}  # scripts/llama-wheel builds it; its own dependencies are locked


def pins(lock: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a lock file."""
    found: dict[str, tuple[str, list[str]]] = {}
    name = ""
    for line in lock.read_text().splitlines():
        stripped = line.strip()
        if line and not line[0].isspace() and "==" in line:
            name, _, rest = line.partition("==")
            name = canonicalize_name(name.split("[")[0])
            found[name] = (rest.split()[0].rstrip("\\").strip().split(";")[0].strip(), [])
        elif stripped.startswith("--hash=sha256:") and name:
            found[name][1].append(stripped.removeprefix("--hash=sha256:").rstrip("\\").strip())
    return found


def declared(extras: tuple[str, ...]) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = [*project["dependencies"], *(r for e in extras for r in project["optional-dependencies"][e])]
    return [Requirement(text) for text in listed]


@pytest.mark.parametrize(("lock", "extras"), [("ark.lock", ("engine",)), ("test.lock", ("engine", "test"))])
def test_the_lock_pins_every_declared_dependency_with_hashes(lock: str, extras: tuple[str, ...]) -> None:
    locked = pins(ROOT / "requirements" / lock)
    assert len(locked) > 20
    for name, (version, hashes) in locked.items():
        assert hashes and all(len(h) == 64 for h in hashes), f"{name}=={version} has no hash"
    for requirement in declared(extras):
        name = canonicalize_name(requirement.name)
        if name in BUILT_HERE or (requirement.marker and not requirement.marker.evaluate({"sys_platform": "linux"})):
            continue
        assert name in locked, f"{requirement} is declared in pyproject.toml but not locked: run scripts/lock"
        version = locked[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{name}=={version} in {lock} does not satisfy {requirement}: run scripts/lock"
        )
    assert not BUILT_HERE & set(locked)


def test_scripts_install_installs_from_the_lock_with_hashes_required() -> None:
    text = (ROOT / "scripts" / "install").read_text()
    assert 'pip install -q --require-hashes --no-deps -r "$lock"' in text
    assert "lock=requirements/ark.lock" in text and "lock=requirements/test.lock" in text


def wheel(folder: Path, body: str) -> Path:
    """A one-module wheel, arkprobe 1.0, whose module says ``body``."""
    path = folder / "arkprobe-1.0-py3-none-any.whl"
    files = {
        "arkprobe.py": body.encode(),
        "arkprobe-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: arkprobe\nVersion: 1.0\n",
        "arkprobe-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = "".join(
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for name, data in files.items()
    )
    files["arkprobe-1.0.dist-info/RECORD"] = (record + "arkprobe-1.0.dist-info/RECORD,,\n").encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def test_pip_refuses_a_file_that_changed_under_its_pin(tmp_path: Path) -> None:
    index = tmp_path / "index"
    index.mkdir()
    pinned = hashlib.sha256(wheel(index, "GOOD = True\n").read_bytes()).hexdigest()
    lock = tmp_path / "lock.txt"
    lock.write_text(f"arkprobe==1.0 \\\n    --hash=sha256:{pinned}\n")

    def install(into: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "pip", "install", "--require-hashes", "--no-deps", "--no-index"]
        argv += ["--find-links", str(index), "--target", str(tmp_path / into), "-r", str(lock)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, env={"PIP_CONFIG_FILE": "/dev/null"})

    assert install("good").returncode == 0 and (tmp_path / "good" / "arkprobe.py").read_text() == "GOOD = True\n"
    wheel(index, "GOOD = False  # the same name and version, other bytes\n")
    refused = install("bad")
    assert refused.returncode != 0 and "DO NOT MATCH THE HASHES" in refused.stderr
    assert not (tmp_path / "bad" / "arkprobe.py").exists()
