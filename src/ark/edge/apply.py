"""`ark firewall apply | confirm | rollback`: load the ruleset so that a mistake cannot lock you out.

apply: save what is loaded now, write the commands that restore it, start a
*watcher*, then load the new rules (``nft -f``, or ``ipset restore`` +
``iptables-restore --noflush``). Unless `ark firewall confirm` arrives within
``[firewall] confirm_s``, the watcher restores the saved rules by itself. Both
backends save and restore ARK's objects only: ``table inet ark``, or the ``ARK-*``
chains, the jumps to them and the ``ark_*`` sets (a rollback computes its
iptables-restore file from ARK's part then and now, so rules others added in between
stay, and ARK's chains, jump and sets go when there were none). What is
checked and loaded is a copy of the bundle's files taken at apply
(``applied-TOKEN-NAME``): confirm persists exactly that (:mod:`ark.edge.persist`).

The watcher is a detached child process (its own session, started through a
short-lived intermediate so it is nobody's child): it survives the CLI exiting
and the SSH session that ran it dropping, which is exactly when it is needed.
It does not survive a reboot, and neither do unconfirmed rules (only confirm
persists them), so a reboot is the last way back.

Confirm and the watcher race for one file: each *renames* ``pending.json`` to
claim it, and a rename succeeds once, so a rollback and a confirm can never both
happen. ``--netns NAME`` runs every command through ``ip netns exec NAME`` (tests).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ark.edge.files import PRIVATE, write_atomic
from ark.edge.firewall import CHAIN, HOOK, ArkChains, ark_chains, restore_chains, without_jump
from ark.errors import EdgeError

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]
POLL_S = 0.2
NFT_FILES = ("ruleset.nft",)
IPTABLES_FILES = ("ipsets", "rules.v4", "rules.v6")  # in load order: sets before the rules naming them


def run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120)


@dataclass(frozen=True)
class Pending:
    token: str
    backend: str
    netns: str | None
    deadline: float  # time.time() at which the watcher rolls back
    rollback: list[list[str]]  # commands, in order
    applied: list[str]  # the files that were loaded


class FirewallGuard:
    """Apply with an automatic rollback; the state lives in ``DATA/firewall/apply``."""

    def __init__(
        self, data_dir: Path, *, runner: Runner = run_command, spawn: Callable[[Path, str], int] | None = None
    ) -> None:
        self.dir = data_dir / "firewall" / "apply"
        self.run = runner
        self.spawn = spawn or spawn_watcher

    @property
    def pending_path(self) -> Path:
        return self.dir / "pending.json"

    def pending(self) -> Pending | None:
        try:
            return Pending(**json.loads(self.pending_path.read_text()))
        except FileNotFoundError:
            return None

    # -- apply ------------------------------------------------------------------------------------
    def apply(self, bundle: Path, backend: str, confirm_s: int, netns: str | None = None) -> Pending:
        if self.pending() is not None:
            raise EdgeError("an apply is waiting for confirmation: `ark firewall confirm` or `ark firewall rollback`")
        prefix = ["ip", "netns", "exec", netns] if netns else []
        _require_tools(backend, netns)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        token = secrets.token_hex(6)
        self._forget_snapshots()
        names = NFT_FILES if backend == "nft" else IPTABLES_FILES
        sources = [bundle / "firewall" / name for name in names]
        for path in sources:
            _must_exist(path)
        for path in sources:  # what is checked and loaded, and what confirm persists, even if the bundle changes
            write_atomic(self.snapshot(token, path.name), path.read_bytes(), PRIVATE)
        if backend == "nft":
            rollback, steps = self._nft(sources[0], prefix, token)
        else:
            rollback, steps = self._iptables(prefix, token)
        pending = Pending(token, backend, netns, time.time() + confirm_s, rollback, [str(p) for p in sources])
        self._write_pending(pending)
        self._log("armed", pending, f"rollback in {confirm_s} s unless confirmed")
        try:
            pid = self.spawn(self.pending_path, token)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            self.pending_path.unlink()
            raise EdgeError(f"cannot start the rollback watcher, nothing was applied: {exc}") from None
        write_atomic(self.dir / "watcher.pid", f"{pid}\n".encode(), PRIVATE)
        for step in steps:
            result = self.run(step)
            if result.returncode != 0:
                self.rollback_now(reason=f"{' '.join(step)} failed")
                raise EdgeError(f"{' '.join(step)} failed, the previous rules are back:\n{result.stderr.strip()}")
        self._log("applied", pending, ", ".join(pending.applied))
        return pending

    def _nft(self, ruleset: Path, prefix: list[str], token: str) -> tuple[list[list[str]], list[list[str]]]:
        loaded = self.snapshot(token, ruleset.name)
        saved = self.run([*prefix, "nft", "list", "table", "inet", "ark"])
        restore = self.dir / f"rollback-{token}.nft"
        # nothing saved: the rollback just removes ARK's table
        text = "table inet ark {}\ndelete table inet ark\n" + (saved.stdout if saved.returncode == 0 else "")
        write_atomic(restore, text.encode(), PRIVATE)
        check = [*prefix, "nft", "-c", "-f", str(loaded)]
        result = self.run(check)
        if result.returncode != 0:
            raise EdgeError(f"{ruleset} does not load, nothing was applied:\n{result.stderr.strip()}")
        return [[*prefix, "nft", "-f", str(restore)]], [[*prefix, "nft", "-f", str(loaded)]]

    def _iptables(self, prefix: list[str], token: str) -> tuple[list[list[str]], list[list[str]]]:
        files = {name: self.snapshot(token, name) for name in IPTABLES_FILES}
        saved_sets = self.run([*prefix, "ipset", "save"]).stdout
        rollback: list[list[str]] = []
        refill = _ark_sets_refill(saved_sets)
        if refill:
            sets_file = self.dir / f"rollback-{token}.ipset"
            write_atomic(sets_file, refill.encode(), PRIVATE)
            rollback.append([*prefix, "ipset", "restore", "-exist", "-file", str(sets_file)])
        tests, loads = [], []
        for tool, suffix in (("iptables", "v4"), ("ip6tables", "v6")):
            saved = self.run([*prefix, f"{tool}-save", "-t", "filter"])
            if saved.returncode != 0:  # unknown before: a rollback could not put ARK's chains back
                raise EdgeError(f"{tool}-save failed, nothing was applied:\n{saved.stderr.strip()}")
            before = ark_chains(saved.stdout)
            write_atomic(self._before(token, suffix), before.text().encode(), PRIVATE)
            # what the rollback loads if it cannot read the rules then (it rewrites this from what is loaded)
            restore = restore_chains(before, _after_apply(before))
            write_atomic(self._rollback_file(token, suffix), restore.encode(), PRIVATE)
            rollback.append([*prefix, f"{tool}-restore", "--noflush", str(self._rollback_file(token, suffix))])
            rules = files[f"rules.{suffix}"]
            if HOOK in before.jumps:  # INPUT jumps to ARK's chain already: another jump would double it
                hooked = self.dir / f"applied-{token}-hooked-rules.{suffix}"
                write_atomic(hooked, without_jump(rules.read_text()).encode(), PRIVATE)
                rules = hooked
            tests.append([*prefix, f"{tool}-restore", "--test", "--noflush", str(rules)])
            loads.append([*prefix, f"{tool}-restore", "--noflush", str(rules)])
        new_sets = _set_names(files["ipsets"].read_text()) - _set_names(saved_sets)
        if new_sets:  # sets this apply creates go after the rules naming them
            destroy = self.dir / f"rollback-{token}.ipset-new"
            write_atomic(destroy, "".join(f"destroy {name}\n" for name in sorted(new_sets)).encode(), PRIVATE)
            rollback.append([*prefix, "ipset", "restore", "-file", str(destroy)])
        steps = [[*prefix, "ipset", "restore", "-exist", "-file", str(files["ipsets"])], *tests, *loads]
        return rollback, steps

    def _before(self, token: str, suffix: str) -> Path:
        return self.dir / f"before-{token}.{suffix}"

    def _rollback_file(self, token: str, suffix: str) -> Path:
        return self.dir / f"rollback-{token}.{suffix}"

    def _refresh_iptables_rollback(self, pending: Pending) -> None:
        """Rewrite the restore files from ARK's part as loaded now, so that rules others added stay."""
        prefix = ["ip", "netns", "exec", pending.netns] if pending.netns else []
        for tool, suffix in (("iptables", "v4"), ("ip6tables", "v6")):
            try:
                before = ark_chains(self._before(pending.token, suffix).read_text())
                saved = self.run([*prefix, f"{tool}-save", "-t", "filter"])
            except (OSError, subprocess.SubprocessError):
                continue  # the file written at apply is the way back
            if saved.returncode == 0:
                restore = restore_chains(before, ark_chains(saved.stdout))
                write_atomic(self._rollback_file(pending.token, suffix), restore.encode(), PRIVATE)

    def snapshot(self, token: str, name: str) -> Path:
        """The copy of a bundle file (``ruleset.nft``, ``rules.v4``...) that the apply ``token`` loaded."""
        return self.dir / f"applied-{token}-{name}"

    def _forget_snapshots(self) -> None:
        """Earlier applies' copies: confirmed ones are persisted by now, the others were rolled back."""
        for path in self.dir.glob("applied-*"):
            path.unlink(missing_ok=True)

    # -- confirm / rollback -----------------------------------------------------------------------
    def confirm(self) -> Pending:
        claimed = self._claim("confirmed")
        if claimed is None:
            raise EdgeError(f"nothing to confirm. {self.last_event()}")
        self._log("confirmed", claimed, "kept")
        return claimed

    def rollback_now(self, reason: str = "asked for") -> Pending:
        claimed = self._claim("rolling-back")
        if claimed is None:
            raise EdgeError(f"nothing to roll back. {self.last_event()}")
        self._restore(claimed, reason)
        return claimed

    def watch(self, token: str, clock: Callable[[], float] = time.time) -> None:
        """The watcher's loop: gone or replaced -> confirmed, exit; deadline passed -> roll back."""
        while True:
            pending = self.pending()
            if pending is None or pending.token != token:
                return
            if clock() >= pending.deadline:
                claimed = self._claim("rolling-back")
                if claimed is not None and claimed.token == token:
                    self._restore(claimed, "not confirmed in time")
                return
            time.sleep(min(POLL_S, max(0.0, pending.deadline - clock())))

    def _claim(self, state: str) -> Pending | None:
        target = self.dir / f"{state}.json"
        try:
            os.rename(self.pending_path, target)
        except FileNotFoundError:
            return None
        return Pending(**json.loads(target.read_text()))

    def _restore(self, pending: Pending, reason: str) -> None:
        problems = []
        if pending.backend == "iptables":
            self._refresh_iptables_rollback(pending)
        for step in pending.rollback:
            result = self.run(step)
            if result.returncode != 0:
                problems.append(f"{' '.join(step)}: {result.stderr.strip()}")
        self._log("rolled_back" if not problems else "rollback_failed", pending, "; ".join([reason, *problems]))

    # -- state --------------------------------------------------------------------------------------
    def _write_pending(self, pending: Pending) -> None:
        write_atomic(self.pending_path, json.dumps(asdict(pending)).encode(), PRIVATE)

    def _log(self, event: str, pending: Pending, detail: str) -> None:
        entry = {"time": time.time(), "event": event, "backend": pending.backend, "netns": pending.netns}
        with (self.dir / "history.jsonl").open("a") as f:
            f.write(json.dumps({**entry, "token": pending.token, "detail": detail}) + "\n")

    def watcher_pid(self) -> int | None:
        """The last watcher's process id (it exits once its apply is confirmed or rolled back)."""
        try:
            return int((self.dir / "watcher.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def history(self) -> list[dict[str, object]]:
        try:
            lines = (self.dir / "history.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def last_event(self) -> str:
        history = self.history()
        if not history:
            return "No apply has run."
        last = history[-1]
        return f"Last: {last['event']} ({last['detail']})."


def _require_tools(backend: str, netns: str | None) -> None:
    iptables = [f"{tool}-{verb}" for tool in ("iptables", "ip6tables") for verb in ("save", "restore")]
    tools = ["nft"] if backend == "nft" else ["ipset", *iptables]
    if netns:
        tools.append("ip")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise EdgeError(f"not installed: {', '.join(missing)} (apt-get install nftables iptables ipset iproute2)")


def _must_exist(path: Path) -> None:
    if not path.exists():
        raise EdgeError(f"{path} is missing: run `ark render` first")


def _ark_sets_refill(saved: str) -> str:
    """From ``ipset save``: flush and refill ARK's sets as they were (they are never destroyed)."""
    lines = []
    for line in saved.splitlines():
        words = line.split()
        if len(words) >= 2 and words[1].startswith("ark_"):
            if words[0] == "create":
                lines.append(f"flush {words[1]}")
            elif words[0] == "add":
                lines.append(line)
    return "\n".join(lines) + "\n" if lines else ""


def _set_names(text: str) -> set[str]:
    """ARK's set names created in ``ipset save`` or ``ipset restore`` text."""
    rows = (line.split() for line in text.splitlines())
    return {words[1] for words in rows if len(words) >= 2 and words[0] == "create" and words[1].startswith("ark_")}


def _after_apply(before: ArkChains) -> ArkChains:
    """ARK's part as an apply leaves it: its chain there, and INPUT jumping to it."""
    return ArkChains({CHAIN: (), **before.chains}, before.jumps if HOOK in before.jumps else (*before.jumps, HOOK))


def spawn_watcher(pending_path: Path, token: str) -> int:
    """Start the watcher through an intermediate process that exits at once; returns the watcher's pid."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])  # so `-m ark.edge.apply` works from any cwd
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "ark.edge.apply", "spawn", str(pending_path), token]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env, cwd="/")
    if result.returncode != 0:
        raise EdgeError(f"the rollback watcher did not start: {result.stderr.strip()}")
    return int(result.stdout.strip())


def main(argv: Sequence[str]) -> int:
    """``spawn PENDING TOKEN``: start a detached watcher, print its pid. ``watch PENDING TOKEN``: be one."""
    command, pending_path, token = argv
    path = Path(pending_path)
    if command == "spawn":
        log = open(path.parent / "watcher.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "ark.edge.apply", "watch", pending_path, token],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # no SIGHUP when the terminal or SSH session goes away
            cwd="/",
        )
        print(proc.pid, flush=True)
        return 0
    guard = FirewallGuard(path.parent.parent.parent)
    with contextlib.suppress(KeyboardInterrupt):
        guard.watch(token)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
