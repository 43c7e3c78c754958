"""Persist a confirmed ruleset where Debian 12 loads it at boot, and tell whether it still matches.

Only `ark firewall confirm` persists (an apply nobody confirmed must not come back after a reboot),
and it writes the copies of the files that apply loaded, not the bundle as it is now:

- nft: ``[firewall] persist_nft_path`` (/etc/nftables.conf: nftables.service runs ``nft -f`` on it
  at boot and on reload), with ``#!/usr/sbin/nft -f`` and mode 0755 as Debian ships it. Like the
  rendered ruleset it replaces ``table inet ark`` only, never ``flush ruleset``, so a reload keeps
  Docker's and libvirt's tables.
- iptables: ``persist_ipsets_path``, ``persist_rules_v4_path``, ``persist_rules_v6_path``
  (/etc/iptables/: netfilter-persistent loads the sets with ``ipset restore -exist``, then the rules
  with ``iptables-restore``), mode 0640 as ``netfilter-persistent save`` leaves them. The rules file
  holds ARK's chain and INPUT's jump to it: on the empty table of a boot it gives what apply loaded.

A file found there that ARK did not write is kept once as ``PATH.ark-previous``. ``persisted.json``
(beside the guard's state) records a SHA-256 of each file written and of the ruleset as loaded at
confirm, so `ark firewall status` and `ark audit` can tell whether the files, and the rules loaded
now, are still the ones confirmed.
"""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from ark.config import FirewallSettings
from ark.edge.apply import IPTABLES_FILES, NFT_FILES, FirewallGuard, Pending, Runner, run_command
from ark.edge.files import PRIVATE, write_atomic
from ark.edge.firewall import TABLE, ark_chains
from ark.errors import EdgeError

NFT_MODE = 0o755  # Debian's /etc/nftables.conf: an executable `#!/usr/sbin/nft -f` script
IPTABLES_MODE = 0o640  # netfilter-persistent's save: chmod 0640, then iptables-save / ipset save
PREVIOUS = ".ark-previous"
MARK = "# Written by `ark firewall confirm`"
FileState = Literal["same", "changed", "missing"]
LoadedState = Literal["same", "differs", "unknown"]


@dataclass(frozen=True)
class Target:
    path: Path
    content: bytes
    mode: int


@dataclass(frozen=True)
class Persisted:
    """What the last confirm wrote (``persisted.json``)."""

    token: str
    backend: str
    netns: str | None
    time: float
    files: dict[str, str]  # path -> SHA-256 of the content written
    loaded: str | None  # SHA-256 of the ruleset as listed at confirm; None: it could not be read


@dataclass(frozen=True)
class PersistStatus:
    enabled: bool
    record: Persisted | None
    files: dict[str, FileState]  # the record's files, as they are now
    loaded: LoadedState  # the rules loaded now against those confirmed
    paths: tuple[str, ...]  # where the settings say to write now


def persisted_files(backend: str, fw: FirewallSettings, applied: Mapping[str, bytes]) -> list[Target]:
    """The files confirm writes, from the files apply loaded (name -> content)."""
    if backend == "nft":
        head = [
            "#!/usr/sbin/nft -f",
            f"{MARK}: the ruleset it confirmed; nftables.service loads it at boot.",
            "# Replaces table inet ark only (no `flush ruleset`): a reload keeps other tables (Docker's, libvirt's).",
        ]
        return [Target(fw.persist_nft_path, _headed(head, applied["ruleset.nft"]), NFT_MODE)]
    boot = "netfilter-persistent loads it at boot"
    rules = [
        f"{MARK}: the rules it confirmed; {boot} (iptables-restore).",
        "# ARK's chain ARK-INPUT and INPUT's jump to it only: with Docker, IPTABLES_RESTORE_NOFLUSH=yes in",
        "# /etc/default/netfilter-persistent keeps Docker's chains on a reload (which adds one more, idle, jump).",
    ]
    sets = [f"{MARK}: the sets it confirmed; {boot} (ipset restore -exist) before the rules."]
    return [
        Target(fw.persist_ipsets_path, _headed(sets, applied["ipsets"]), IPTABLES_MODE),
        Target(fw.persist_rules_v4_path, _headed(rules, applied["rules.v4"]), IPTABLES_MODE),
        Target(fw.persist_rules_v6_path, _headed(rules, applied["rules.v6"]), IPTABLES_MODE),
    ]


def persist_paths(backend: str, fw: FirewallSettings) -> tuple[Path, ...]:
    if backend == "nft":
        return (fw.persist_nft_path,)
    return (fw.persist_ipsets_path, fw.persist_rules_v4_path, fw.persist_rules_v6_path)


def _headed(head: list[str], content: bytes) -> bytes:
    return "\n".join(head).encode() + b"\n" + content


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


class Persister:
    """Writes the confirmed ruleset and compares it later; the record lives beside the guard's state."""

    def __init__(self, guard: FirewallGuard, fw: FirewallSettings, runner: Runner = run_command) -> None:
        self.guard = guard
        self.fw = fw
        self.run = runner

    @property
    def record_path(self) -> Path:
        return self.guard.dir / "persisted.json"

    def persist(self, pending: Pending, *, netns_ok: bool = False) -> list[tuple[Path, Path | None]]:
        """Write what ``pending`` loaded; returns each path written with its ``.ark-previous`` copy, if made now.

        An apply in a network namespace is not persisted: the boot files are the host's. ``netns_ok``
        persists it anyway, for tests whose persist paths point at test files.
        """
        if pending.netns and not netns_ok:
            raise EdgeError(f"applied in namespace {pending.netns}: not persisted (boot files are the host's)")
        names = NFT_FILES if pending.backend == "nft" else IPTABLES_FILES
        try:
            applied = {name: self.guard.snapshot(pending.token, name).read_bytes() for name in names}
        except FileNotFoundError:
            raise EdgeError("the files this apply loaded are gone: apply and confirm again to persist") from None
        written = []
        for target in persisted_files(pending.backend, self.fw, applied):
            try:
                previous = keep_previous(target.path)
                write_atomic(target.path, target.content, target.mode)
            except OSError as exc:
                raise EdgeError(f"cannot write {target.path}: {exc.strerror or exc}") from None
            written.append((target, previous))
        listing = loaded_ruleset(pending.backend, pending.netns, self.run)
        record = Persisted(
            token=pending.token,
            backend=pending.backend,
            netns=pending.netns,
            time=time.time(),
            files={str(t.path): sha256(t.content) for t, _ in written},
            loaded=None if listing is None else sha256(listing.encode()),
        )
        write_atomic(self.record_path, json.dumps(asdict(record)).encode(), PRIVATE)
        return [(t.path, previous) for t, previous in written]

    def record(self) -> Persisted | None:
        try:
            return Persisted(**json.loads(self.record_path.read_text()))
        except FileNotFoundError:
            return None

    def status(self) -> PersistStatus:
        record = self.record()
        paths = tuple(str(p) for p in persist_paths(self.fw.backend, self.fw))
        if record is None:
            return PersistStatus(self.fw.persist, None, {}, "unknown", paths)
        files: dict[str, FileState] = {}
        for path, digest in record.files.items():
            try:
                files[path] = "same" if sha256(Path(path).read_bytes()) == digest else "changed"
            except FileNotFoundError:
                files[path] = "missing"
            except OSError:
                files[path] = "changed"  # unreadable: not the file ARK wrote, as far as anyone can tell
        listing = loaded_ruleset(record.backend, record.netns, self.run)
        loaded: LoadedState = "unknown"
        if listing is not None and record.loaded is not None:
            loaded = "same" if sha256(listing.encode()) == record.loaded else "differs"
        return PersistStatus(self.fw.persist, record, files, loaded, paths)


def keep_previous(path: Path) -> Path | None:
    """Copy a file ARK did not write to ``PATH.ark-previous``, once (a later confirm never replaces the copy)."""
    previous = path.with_name(path.name + PREVIOUS)
    try:
        old = path.read_bytes()
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
    if previous.exists() or MARK.encode() in old[:512]:
        return None
    write_atomic(previous, old, mode)
    return previous


def loaded_ruleset(backend: str, netns: str | None, run: Runner) -> str | None:
    """ARK's rules as loaded now, as text without counters ("" when none are); None: cannot be read."""
    prefix = ["ip", "netns", "exec", netns] if netns else []

    def out(*argv: str) -> str | None:
        try:
            result = run([*prefix, *argv])
        except (OSError, subprocess.SubprocessError):
            return None
        return result.stdout if result.returncode == 0 else None

    if backend == "nft":
        table = out("nft", "-s", "list", "table", "inet", TABLE)
        if table is None:  # no such table, or no permission to ask
            return "" if out("nft", "list", "tables") is not None else None
        return table
    parts = [out("iptables-save", "-t", "filter"), out("ip6tables-save", "-t", "filter"), out("ipset", "save")]
    if any(part is None for part in parts):
        return None
    v4, v6, sets = (part or "" for part in parts)
    return "\n".join([ark_chains(v4).text(), ark_chains(v6).text(), *_ark_sets(sets)])  # others' rules left out


def _ark_sets(saved: str) -> list[str]:
    """ARK's sets and members from ``ipset save``, sorted (hash sizes and seeds vary, members do not)."""
    lines = []
    for line in saved.splitlines():
        words = line.split()
        if len(words) >= 3 and words[1].startswith("ark_") and words[0] in ("create", "add"):
            lines.append(" ".join(words[:3]))
    return sorted(lines)


def describe(status: PersistStatus) -> list[str]:
    """``ark firewall status``'s lines about persistence."""
    record = status.record
    lines = []
    if not status.enabled:
        lines.append("Not persisted: [firewall] persist = false, confirmed rules last until the next reboot.")
    elif record is None:
        where = ", ".join(status.paths)
        lines.append(f"Nothing persisted yet: a reboot loads what {where} hold(s) now; the next confirm writes there.")
    if record is None:
        return lines
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.time))
    netns = f", netns {record.netns}" if record.netns else ""
    head = "Persisted" if status.enabled else "Still loaded at boot: persisted"
    lines.append(f"{head} at confirm {when} ({record.backend}{netns}):")
    words = {"same": "as written", "changed": "CHANGED since (a reboot loads something else)", "missing": "MISSING"}
    lines += [f"  {path}: {words[state]}" for path, state in status.files.items()]
    if status.enabled and set(status.paths) != set(status.files):
        lines.append(f"  the settings name {', '.join(status.paths)} now: apply and confirm to write there")
    lines.append(
        {
            "same": "The loaded rules are the persisted ones.",
            "differs": "The loaded rules DIFFER from the persisted ones: a reboot loads the persisted ones.",
            "unknown": "Cannot read the loaded rules to compare them (root, nft/iptables installed?).",
        }[status.loaded]
    )
    return lines
