"""Secret env sealed to the one member that runs the task.

The broker's ACL already lets only worker ``{w}`` read its ``cmd`` topic, but a broker
edgeplane does not configure (``--broker``), or one misconfigured, might not. So a task's
``secret_env`` travels encrypted to its member with AES-256-GCM, under a key derived
(HKDF-SHA256) from the member's command key: the per-worker key it got when it joined,
which only the manager and that worker hold. The key used for the MAC
(``signing.py``) is not used directly: one key, one purpose.

The additional data binds the sealed value to the task, the attempt and the member, so a
sealed value cannot be moved onto another task, attempt or member (it would not open).

Format: ``"v1." + base64url(nonce(12) || ciphertext || tag(16))`` of the JSON object.
Nothing of this runs for a task without secret env.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edgeplane.errors import Invalid

_PREFIX = "v1."
_INFO = b"edgeplane secret_env v1"
_NONCE = 12


def derive(command_key: bytes) -> bytes:
    """The 256-bit sealing key of a member, from its command (MAC) key."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(command_key)


def _aad(task_id: str, attempt: int, member_id: str) -> bytes:
    return f"{task_id}\0{attempt}\0{member_id}".encode()


def seal(key: bytes, env: Mapping[str, str], *, task_id: str, attempt: int, member_id: str) -> str:
    """``env`` encrypted for ``member_id``'s attempt ``attempt`` of ``task_id``."""
    nonce = os.urandom(_NONCE)
    sealed = AESGCM(key).encrypt(nonce, orjson.dumps(dict(env)), _aad(task_id, attempt, member_id))
    return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()


def unseal(
    key: bytes, sealed: str, *, task_id: str, attempt: int, member_id: str
) -> dict[str, str]:
    """The env :func:`seal` sealed; :class:`Invalid` (never the content) when the key is
    wrong, the value was changed, or it was sealed for another task, attempt or member."""
    refused = Invalid(
        "secret_env could not be opened: wrong key, or changed on the way", field="secret_env"
    )
    if not sealed.startswith(_PREFIX):
        raise refused
    try:
        raw = base64.urlsafe_b64decode(sealed[len(_PREFIX) :])
        plain = AESGCM(key).decrypt(raw[:_NONCE], raw[_NONCE:], _aad(task_id, attempt, member_id))
        env = orjson.loads(plain)
    except (binascii.Error, ValueError, InvalidTag, orjson.JSONDecodeError):
        raise refused from None
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise refused
    return env
