"""Sealing a backup's secrets with a passphrase: scrypt (RFC 7914) derives a key, AES-256-GCM encrypts and
authenticates (the ``cryptography`` package: OpenSSL underneath). A wrong passphrase and a changed byte are
one and the same error: the tag does not match, and nothing is returned."""

from __future__ import annotations

import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ark.errors import ArkError

MAGIC = b"ARK-SEALED-1\n"
# scrypt's cost: 2**17 x 8 x 128 bytes = 128 MiB and about half a second per try, here and for an attacker
KDF = {"name": "scrypt", "n": 2**17, "r": 8, "p": 1}
MIN_PASSPHRASE = 12


class BackupError(ArkError):
    """A backup that cannot be made, read or restored; the message says why and what was left untouched."""


def _key(passphrase: str, salt: bytes, kdf: dict[str, Any]) -> bytes:
    if kdf.get("name") != "scrypt":
        raise BackupError(f"the secrets are sealed with {kdf.get('name')!r}, which this ARK does not know")
    n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
    if not (2**14 <= n <= 2**18 and n & (n - 1) == 0 and 1 <= r <= 16 and p == 1):  # at most 512 MiB
        raise BackupError("the secrets' key derivation parameters are out of range: the archive is damaged")
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode())


def check_passphrase(passphrase: str) -> str:
    if len(passphrase) < MIN_PASSPHRASE:
        raise BackupError(f"a backup passphrase has at least {MIN_PASSPHRASE} characters")
    return passphrase


def seal(data: bytes, passphrase: str) -> bytes:
    salt, nonce = os.urandom(16), os.urandom(12)
    sealed = AESGCM(_key(passphrase, salt, KDF)).encrypt(nonce, data, MAGIC)
    return MAGIC + salt + nonce + sealed


def unseal(blob: bytes, passphrase: str, kdf: dict[str, Any]) -> bytes:
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 16 + 12 + 16:
        raise BackupError("the sealed secrets are not ARK's: the archive is damaged")
    at = len(MAGIC)
    salt, nonce, sealed = blob[at : at + 16], blob[at + 16 : at + 28], blob[at + 28 :]
    try:
        return AESGCM(_key(passphrase, salt, kdf)).decrypt(nonce, sealed, MAGIC)
    except InvalidTag:
        raise BackupError("the passphrase is wrong, or the sealed secrets were changed") from None
