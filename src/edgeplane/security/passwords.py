"""Password hashing with argon2id (argon2-cffi's defaults). Only logins pay for it: the
tokens a login hands out are random and checked by their sha256."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from edgeplane.errors import Invalid

_hasher = PasswordHasher()
MIN_LENGTH = 8
#: Checked against when a user does not exist, so a wrong name costs what a wrong password
#: does (no timing tells which names exist).
_DUMMY = _hasher.hash("edgeplane-no-such-user")


def hash_password(password: str) -> str:
    if len(password) < MIN_LENGTH:
        raise Invalid(f"password shorter than {MIN_LENGTH} characters", field="password")
    return _hasher.hash(password)


def verify(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False
