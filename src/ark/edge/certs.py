"""Certificates: Let's Encrypt's, obtained by certbot into the data dir, or a local CA for tests and LANs.

Let's Encrypt: ``ark certs letsencrypt`` (:mod:`ark.edge.acme`) runs certbot with its own
directories under ``DATA/certbot``, one certificate per site name, and Nginx reads them from
certbot's live directory there (``DATA/certbot/config/live/NAME/``): a renewal only needs a reload.

The local CA signs one certificate per site name (SAN = that name). Its name
constraints limit it to the domain, so trusting it on a laptop cannot make it
vouch for anything else. Existing files are reused while they are still good
(right name, signed by this CA, more than 30 days left), so re-rendering does
not churn keys.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ark.edge.files import PRIVATE, PUBLIC, Files, FileSpec

LETSENCRYPT = Path("/etc/letsencrypt/live")  # the system certbot's, which ARK does not use
CERTBOT_DIR = "certbot"  # inside the data dir: certbot's config/, work/ and logs/
CERTS_DIR = "certs"  # inside the rendered bundle
CA_DAYS = 3650
LEAF_DAYS = 397  # what browsers accept from public CAs; a private CA keeps to it too
RENEW_BEFORE = dt.timedelta(days=30)

Existing = Callable[[str], bytes | None]


@dataclass(frozen=True)
class CertPaths:
    fullchain: Path
    privkey: Path


def certbot_live(data_dir: Path) -> Path:
    """certbot's live directory under ARK's data dir: ``NAME/fullchain.pem`` and ``NAME/privkey.pem``."""
    return data_dir.absolute() / CERTBOT_DIR / "config" / "live"


def cert_paths(tls: str, out: Path, name: str, live: Path = LETSENCRYPT) -> CertPaths:
    """Where Nginx finds the certificate of ``name``: certbot's live directory (``live``), or the bundle's."""
    base = live / name if tls == "letsencrypt" else out / CERTS_DIR / name
    return CertPaths(base / "fullchain.pem", base / "privkey.pem")


def self_signed_files(domain: str, names: Iterable[str], existing: Existing, now: dt.datetime | None = None) -> Files:
    """CA and leaf files under ``certs/``: kept when still good, made fresh otherwise."""
    now = now or dt.datetime.now(dt.UTC)
    ca_cert, ca_key = _ca(domain, existing(f"{CERTS_DIR}/ca.pem"), existing(f"{CERTS_DIR}/ca.key"), now)
    files: Files = {
        f"{CERTS_DIR}/ca.pem": FileSpec(_pem(ca_cert), PUBLIC),
        f"{CERTS_DIR}/ca.key": FileSpec(_key_pem(ca_key), PRIVATE),
    }
    for name in names:
        chain_path, key_path = f"{CERTS_DIR}/{name}/fullchain.pem", f"{CERTS_DIR}/{name}/privkey.pem"
        old_chain, old_key = existing(chain_path), existing(key_path)
        if old_chain and old_key and _leaf_is_good(old_chain, old_key, name, ca_cert, now):
            chain, key = old_chain, old_key
        else:
            cert, new_key = _leaf(name, ca_cert, ca_key, now)
            chain, key = _pem(cert), _key_pem(new_key)
        files[chain_path] = FileSpec(chain, PUBLIC)
        files[key_path] = FileSpec(key, PRIVATE)
    return files


def not_after(pem: bytes) -> dt.datetime:
    """Expiry of the first certificate in a PEM file."""
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc


def certbot_commands(names: Iterable[str], email: str, webroot: Path) -> str:
    """``certs/certbot.sh``: what obtains the certificates, which ARK now does itself (``ark certs letsencrypt``)."""
    out = webroot.parent
    lines = [
        "#!/bin/sh",
        "# Rendered by `ark render`. ARK runs certbot itself, with its own directories (DATA/certbot):",
        "#   ark certs letsencrypt   a certificate for each name below, then nginx -t and an Nginx reload",
        "#   ark certs renew         renews those due (run it from a timer or cron: docs/security.md)",
        f"# Names: {' '.join(names)}",
        f"# HTTP-01 webroot: {webroot} (Nginx serves it on port 80 at /.well-known/acme-challenge/)",
        f"# Contact: {email or '(none: [edge] email is empty)'}",
        "# Pass --config / --data-dir as to any ark command.",
        f'exec ark certs letsencrypt --out "{out}" "$@"',
    ]
    return "\n".join(lines) + "\n"


def _ca(
    domain: str, cert_pem: bytes | None, key_pem: bytes | None, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if cert_pem and key_pem:
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem, None)
            good = (
                isinstance(key, ec.EllipticCurvePrivateKey)
                and cert.public_key() == key.public_key()
                and cert.not_valid_after_utc - now > RENEW_BEFORE
                and _ca_domain(cert) == domain
            )
            if good and isinstance(key, ec.EllipticCurvePrivateKey):
                return cert, key
        except ValueError:
            pass
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"ARK local CA for {domain}")])
    cert = (
        _builder(subject, subject, key.public_key(), now, CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(x509.NameConstraints([x509.DNSName(domain)], None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _ca_domain(cert: x509.Certificate) -> str | None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None
    permitted = constraints.permitted_subtrees or []
    return next((str(n.value) for n in permitted if isinstance(n, x509.DNSName)), None)


def _leaf(
    name: str, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _builder(subject, ca_cert.subject, key.public_key(), now, LEAF_DAYS)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )  # digitalSignature
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _leaf_is_good(chain: bytes, key_pem: bytes, name: str, ca: x509.Certificate, now: dt.datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(chain)
        key = serialization.load_pem_private_key(key_pem, None)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return (
        sans.get_values_for_type(x509.DNSName) == [name]
        and cert.public_key() == key.public_key()
        and cert.not_valid_after_utc - now > RENEW_BEFORE
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, now: dt.datetime, days: int
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate a little clock skew
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
