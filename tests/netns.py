"""Throwaway network namespaces for firewall and WireGuard tests: the machine's own is never touched.

:func:`netns_pair` makes two namespaces joined by a veth pair ("server" A, "client" B), each with
loopback up, and always deletes them (with any process still inside) when the test ends, even on
failure. Names carry this process's id, so parallel runs do not collide.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import pytest


def netns_unavailable() -> str | None:
    """Why namespaces cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "iproute2 is not installed (scripts/install --test installs it)"
    probe = f"arkprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def own_rules() -> str:
    """This machine's own firewall, as text without counters (read only): tests compare it before and after."""
    parts = []
    for argv in (["nft", "list", "ruleset"], ["iptables", "-S"], ["ip6tables", "-S"], ["ipset", "list", "-n"]):
        if shutil.which(argv[0]):
            parts.append(subprocess.run(argv, capture_output=True, text=True).stdout)
    return "\n".join(parts)


def sh(*argv: str, check: bool = True, timeout: float = 30, input: str | None = None) -> str:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


@dataclass(frozen=True)
class Pair:
    a: str  # server namespace, address SUBNET.1
    b: str  # client namespace, address SUBNET.2
    subnet: str  # "10.231.7" (a /24)

    def run_a(self, *argv: str) -> str:
        return sh("ip", "netns", "exec", self.a, *argv)

    def run_b(self, *argv: str) -> str:
        return sh("ip", "netns", "exec", self.b, *argv)

    def add_ipv6(self, prefix: str, b_hosts: tuple[str, ...] = ()) -> None:
        """IPv6 on both ends: A is PREFIX::1, B PREFIX::2 plus ``b_hosts`` (PREFIX::HOST), all /64.

        IPv6 may be off in a new namespace (it inherits the host's defaults), so it is switched on
        for the interface; ``nodad`` makes each address usable at once instead of after duplicate
        address detection (about 2 s, during which a bind to it fails).
        """
        for ns, hosts in ((self.a, ("1",)), (self.b, ("2", *b_hosts))):
            for key in ("all", "default", "eth0", "lo"):
                sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=0")
            for host in hosts:
                sh("ip", "-n", ns, "addr", "add", f"{prefix}::{host}/64", "dev", "eth0", "nodad")


@contextmanager
def netns_pair(tag: str, subnet: str) -> Iterator[Pair]:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    prefix = f"ak{os.getpid() % 100000}{tag}"[:11]
    pair = Pair(f"{prefix}-a", f"{prefix}-b", subnet)
    try:
        sh("ip", "netns", "add", pair.a)
        sh("ip", "netns", "add", pair.b)
        sh("ip", "link", "add", f"{prefix}va", "type", "veth", "peer", "name", f"{prefix}vb")
        for side, ns, host in (("va", pair.a, 1), ("vb", pair.b, 2)):
            sh("ip", "link", "set", f"{prefix}{side}", "netns", ns)
            sh("ip", "-n", ns, "link", "set", f"{prefix}{side}", "name", "eth0")
            sh("ip", "-n", ns, "addr", "add", f"{subnet}.{host}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        yield pair
    finally:
        for ns in (pair.a, pair.b):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:  # only this test's processes can be inside a namespace it made
                with suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
