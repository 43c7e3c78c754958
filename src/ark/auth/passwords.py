"""Password hashes: argon2id with RFC 9106's low-memory profile (t=3, m=64 MiB, p=4).

A hash costs ~0.1 s of CPU and 64 MiB of memory on purpose: that is what makes a stolen database slow
to crack. The same cost is a denial-of-service lever, so callers on the event loop run at most
``max_parallel`` hashes at once (see :class:`ark.auth.service.AuthService`).
"""

from __future__ import annotations

import functools

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ark.errors import AuthError

MIN_LENGTH = 8
MAX_LENGTH = 1024  # longer inputs are refused before hashing: nobody types more, an attacker would


class PasswordProblem(AuthError):
    """A new password that ARK refuses (too short, too long)."""


# RFC 9106 "second recommended option" (argon2-cffi's default): argon2id, 3 passes, 64 MiB, 4 lanes.
HASHER = PasswordHasher(time_cost=3, memory_cost=64 * 1024, parallelism=4, hash_len=32, salt_len=16, type=Type.ID)


def check_new(password: str) -> str:
    """The password if ARK accepts it as a new one; else :class:`PasswordProblem` saying why."""
    if len(password) < MIN_LENGTH:
        raise PasswordProblem(f"a password needs at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise PasswordProblem(f"a password has at most {MAX_LENGTH} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in password):
        raise PasswordProblem("a password cannot contain control characters (a pasted newline?)")
    return password


def hash_password(password: str, hasher: PasswordHasher = HASHER) -> str:
    return hasher.hash(password)


def verify_password(stored: str, password: str, hasher: PasswordHasher = HASHER) -> bool:
    """Whether ``password`` matches ``stored``; a corrupt or foreign hash never matches."""
    if len(password) > MAX_LENGTH:
        return False
    try:
        return hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str, hasher: PasswordHasher = HASHER) -> bool:
    """A hash made with older (weaker) parameters: replace it at the next successful sign-in."""
    try:
        return hasher.check_needs_rehash(stored)
    except InvalidHashError:
        return True


@functools.cache
def dummy_hash(hasher: PasswordHasher = HASHER) -> str:
    """Verified against when the user does not exist, so that an unknown name costs the same time as a
    wrong password (no user enumeration by timing). Made once, on first use: hashing at import is slow."""
    return hasher.hash("ark: no such user")
