"""When the TLS certificates expire, as ``ark_certificate_expiry_timestamp_seconds{name,path}``.

The files come from ``[monitor] certificates`` (globs; certbot's live certificates by default). Each
file is parsed again only when it changes (certbot renews in place), so a scrape costs a stat per file.
A file that cannot be read or parsed is counted in ``ark_certificate_errors`` and logged once, never
turned into a made-up expiry.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("ark.monitor")


def certificate_expiry(path: Path) -> tuple[str, float]:
    """(the certificate's name: its first DNS name, else its CN, else the file; not-after as a Unix time)."""
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    name = path.name
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = names.get_values_for_type(x509.DNSName)
        name = dns[0] if dns else name
    except x509.ExtensionNotFound:
        common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(common[0].value) if common else name
    return name, certificate.not_valid_after_utc.timestamp()


class CertificateCollector(Collector):
    def __init__(self, patterns: str) -> None:
        self.patterns = [p.strip() for p in patterns.split(",") if p.strip()]
        self._cache: dict[Path, tuple[float, tuple[str, float] | None]] = {}  # path -> (mtime, parsed)
        self._said: set[Path] = set()  # unreadable folders already logged

    def unreadable(self) -> list[Path]:
        """The patterns' fixed folders that exist but this process may not list (certbot makes live/ 0700
        root): a glob there finds nothing and says nothing, so they are counted as errors and logged once."""
        out = []
        for pattern in self.patterns:
            fixed = Path(pattern.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0])
            folder = fixed if pattern.endswith(("/", "*")) or fixed.is_dir() else fixed.parent
            if folder.is_dir() and not os.access(folder, os.R_OK | os.X_OK):
                out.append(folder)
                if folder not in self._said:
                    self._said.add(folder)
                    log.warning("certificates: cannot read %s (not this user's): their expiry is not exported", folder)
        return out

    def read(self) -> list[tuple[Path, tuple[str, float] | None]]:
        found = sorted({Path(p) for pattern in self.patterns for p in glob.glob(pattern)})
        out = []
        for path in found:
            try:
                mtime = path.stat().st_mtime
            except OSError:
                continue
            cached = self._cache.get(path)
            if cached is None or cached[0] != mtime:
                try:
                    parsed: tuple[str, float] | None = certificate_expiry(path)
                except (OSError, ValueError) as exc:
                    log.warning("certificate %s: cannot read it: %s", path, exc)
                    parsed = None
                cached = self._cache[path] = (mtime, parsed)
            out.append((path, cached[1]))
        return out

    def collect(self) -> Iterable[Metric]:
        expiry = GaugeMetricFamily(
            "ark_certificate_expiry_timestamp_seconds",
            "When the certificate stops being valid (Unix time).",
            labels=["name", "path"],
        )
        errors = GaugeMetricFamily(
            "ark_certificate_errors",
            "Certificate files that cannot be parsed, and their folders that cannot be read.",
        )
        bad = len(self.unreadable())
        for path, parsed in self.read():
            if parsed is None:
                bad += 1
            else:
                expiry.add_metric([parsed[0], str(path)], parsed[1])
        errors.add_metric([], bad)
        return [expiry, errors]
