"""Recording stand-ins for the system commands `ark deploy apply` runs: systemctl, docker (compose), nginx,
wg, wg-quick, nft, useradd, certbot. :func:`install` writes one small executable per command into a folder
that a test puts first on PATH; each records its arguments in ``calls.jsonl`` and keeps the state the real
command would change (units enabled and active, images pulled, containers running, the loaded ruleset) in
``state.json``, so that the queries a second apply makes get the answers a real box would give.

What each answers follows the real tool where ARK reads it:

- ``systemctl enable`` refuses a unit with no unit file (under the test's root, or one a package installs:
  nginx, ollama, wg-quick@), as systemd does; ``is-enabled``/``is-active`` exit 0, or 1 and 3;
  ``reload`` of an inactive unit fails.
- ``docker compose -f FILE ...``: ``pull`` pulls the file's images; ``up`` fails when an ``env_file`` is missing
  (as Compose does) and runs every service; ``restart`` fails for a service with no container;
  ``ps --format json`` prints one JSON object a line (Compose
  2.21+); ``docker image inspect`` prints ``RepoDigests`` as ``repo@sha256:...`` or fails "No such image".
- ``nft``: ``list table inet ark`` fails until a ruleset is loaded; ``-f FILE`` loads it; ``-c`` checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

TOOLS = ("systemctl", "docker", "nginx", "wg", "wg-quick", "nft", "useradd", "certbot")
PACKAGE_UNITS = ("nginx.service", "ollama.service", "docker.service", "nftables.service")


def install(folder: Path, state: Path, root: Path) -> dict[str, str]:
    """Write the stand-ins into ``folder``; returns the environment entries a command needs to use them."""
    folder.mkdir(parents=True, exist_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        script = folder / tool
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__)}" {tool} "$@"\n')
        script.chmod(0o755)
    return {"FAKE_SYSTEM_STATE": str(state), "FAKE_SYSTEM_ROOT": str(root)}


def calls(state: Path) -> list[list[str]]:
    """Every command run so far: [tool, *args]."""
    path = state / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def load(state: Path) -> dict[str, Any]:
    try:
        return json.loads((state / "state.json").read_text())
    except FileNotFoundError:
        return {"enabled": [], "active": [], "images": {}, "running": {}, "nft": None, "users": []}


def _save(state: Path, data: dict[str, Any]) -> None:
    (state / "state.json").write_text(json.dumps(data, indent=1, sort_keys=True))


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _repo(ref: str) -> str:
    ref = ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return ref.rsplit(":", 1)[0] if ":" in last else ref


def _compose_model(path: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(Path(path).read_text()) or {}


def _dockerfile_base(folder: Path, build: dict[str, Any]) -> str | None:
    """The FROM image of a build (what `docker compose build` pulls first)."""
    context = folder / build.get("context", ".")
    text = (context / build.get("dockerfile", "Dockerfile")).read_text()
    return next((line.split()[1] for line in text.splitlines() if line.startswith("FROM ")), None)


def systemctl(args: list[str], data: dict[str, Any], root: Path) -> int:
    words = [a for a in args if not a.startswith("-")]
    if not words:
        return 1
    verb, units = words[0], words[1:]
    if verb == "daemon-reload":
        return 0
    if verb in ("is-enabled", "is-active"):
        key = "enabled" if verb == "is-enabled" else "active"
        on = all(unit in data[key] for unit in units)
        if "--quiet" not in args:
            print(("enabled" if on else "disabled") if key == "enabled" else ("active" if on else "inactive"))
        return 0 if on else (1 if key == "enabled" else 3)
    if verb in ("disable", "stop"):
        for unit in units:
            if verb == "disable":
                data["enabled"] = [u for u in data["enabled"] if u != unit]
            if verb == "stop" or "--now" in args:
                data["active"] = [u for u in data["active"] if u != unit]
        return 0
    for unit in units:
        exists = (root / "etc/systemd/system" / unit).is_file() or unit in PACKAGE_UNITS or unit.startswith("wg-quick@")
        if not exists:
            print(f"Failed to {verb} unit: Unit file {unit} does not exist.", file=sys.stderr)
            return 1
        if verb == "reload" and unit not in data["active"]:
            print(f"{unit} is not active, cannot reload.", file=sys.stderr)
            return 1
        if verb == "enable":
            data["enabled"] = sorted({*data["enabled"], unit})
        if verb in ("start", "restart", "reload", "reload-or-restart") or (verb == "enable" and "--now" in args):
            data["active"] = sorted({*data["active"], unit})
    return 0


def docker(args: list[str], data: dict[str, Any]) -> int:
    if args[:2] == ["compose", "version"]:
        print("Docker Compose version v2.29.7")
        return 0
    if args[:2] == ["image", "inspect"]:
        ref, fmt = args[-1], args[args.index("--format") + 1] if "--format" in args else ""
        digest = data["images"].get(ref.split("@", 1)[0]) or data["images"].get(ref)
        if digest is None:
            print(f"Error: No such image: {ref}", file=sys.stderr)
            return 1
        print(json.dumps([f"{_repo(ref)}@{digest}"]) if "RepoDigests" in fmt else _digest("id" + ref))
        return 0
    if args[:1] == ["info"]:
        print(json.dumps({"Runtimes": {"runc": {}, "nvidia": {}}}))
        return 0
    if args[:1] != ["compose"] or "-f" not in args:
        print(f"docker stand-in: unexpected {args}", file=sys.stderr)
        return 2
    file = args[args.index("-f") + 1]
    verb = args[args.index("-f") + 2]
    model = _compose_model(file)
    services = model.get("services") or {}
    if verb in ("pull", "build"):
        named = [a for a in args[args.index(verb) + 1 :] if not a.startswith("-")]
        for name, service in services.items():
            ref = service.get("image")
            if named and name not in named:
                continue
            if verb == "pull" and "build" in service:
                print(f"{name}: an image built here cannot be pulled", file=sys.stderr)
                return 1
            if verb == "build" and "build" not in service:
                continue
            if verb == "build" and "FROM" in (Path(file).parent / service["build"]["context"]).joinpath(
                    service["build"].get("dockerfile", "Dockerfile")).read_text():  # fmt: skip
                base = _dockerfile_base(Path(file).parent, service["build"])
                if base and base.split("@", 1)[0] not in data["images"]:
                    data["images"][base.split("@", 1)[0]] = base.split("@", 1)[1] if "@" in base else _digest(base)
            if ref:
                name = ref.split("@", 1)[0]
                data["images"][name] = ref.split("@", 1)[1] if "@" in ref else _digest(name)
        return 0
    if verb == "up":
        for service in services.values():
            entries = service.get("env_file") or []
            for entry in [entries] if isinstance(entries, str | dict) else entries:
                path = entry["path"] if isinstance(entry, dict) else entry
                if not Path(path).is_file():
                    print(f"env file {path} not found: stat {path}: no such file or directory", file=sys.stderr)
                    return 1
            if service.get("image") and service["image"].split("@", 1)[0] not in data["images"]:
                data["images"][service["image"].split("@", 1)[0]] = _digest(service["image"])  # up pulls
        data["running"] = {name: hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()
                           for name, s in services.items()}  # fmt: skip
        return 0
    if verb == "restart":
        named = [a for a in args[args.index(verb) + 1 :] if not a.startswith("-")]
        if any(name not in data["running"] for name in named):
            print(f"no container found for {named}", file=sys.stderr)
            return 1
        return 0
    if verb == "ps":
        for name in sorted(data["running"]):
            print(json.dumps({"Service": name, "State": "running", "Health": "healthy"}))
        return 0
    print(f"docker compose stand-in: unexpected {verb}", file=sys.stderr)
    return 2


def nft(args: list[str], data: dict[str, Any]) -> int:
    if args[:4] == ["list", "table", "inet", "ark"]:
        if data["nft"] is None:
            print("Error: No such file or directory; did you mean table 'ark' in family inet?", file=sys.stderr)
            return 1
        print(data["nft"])
        return 0
    if args[:2] == ["list", "ruleset"]:
        print(data["nft"] or "")
        return 0
    if "-f" in args:
        text = Path(args[args.index("-f") + 1]).read_text()
        if "-c" not in args:
            data["nft"] = None if text.startswith("table inet ark {}\ndelete table inet ark\n") and len(
                text.splitlines()) <= 2 else text  # fmt: skip
        return 0
    return 0


def main(argv: list[str]) -> int:
    tool, args = argv[0], argv[1:]
    state = Path(os.environ["FAKE_SYSTEM_STATE"])
    root = Path(os.environ.get("FAKE_SYSTEM_ROOT", "/"))
    with (state / "calls.jsonl").open("a") as log:
        log.write(json.dumps([tool, *args]) + "\n")
    data = load(state)
    if tool == "systemctl":
        code = systemctl(args, data, root)
    elif tool == "docker":
        code = docker(args, data)
    elif tool == "nft":
        code = nft(args, data)
    elif tool == "wg-quick" and args[:1] == ["strip"]:
        skip = ("Address", "DNS", "MTU", "Table", "PreUp", "PostUp", "PreDown", "PostDown", "SaveConfig")
        lines = Path(args[1]).read_text().splitlines(keepends=True)
        print("".join(line for line in lines if line.split("=", 1)[0].strip() not in skip), end="")
        code = 0
    elif tool == "wg":
        sys.stdin.read()
        code = 0
    elif tool == "useradd":
        data["users"].append(args[-1])
        code = 0
    elif tool == "nginx":
        conf = args[args.index("-c") + 1] if "-c" in args else ""
        code = 0 if conf and Path(conf).is_file() else 1
        if code:
            print(f'nginx: [emerg] open() "{conf}" failed (2: No such file or directory)', file=sys.stderr)
    else:
        print(f"{tool} stand-in: nothing to do for {args}", file=sys.stderr)
        code = 2
    _save(state, data)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
