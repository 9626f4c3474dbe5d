"""A MAC on the manager's commands, so a worker runs only what its manager sent.

The broker's ACL already lets only the manager publish on a worker's ``cmd`` topic; the
MAC (HMAC-SHA256 with a key the worker got when it joined) keeps a broker misconfiguration
from handing out the worker's runtimes. One MAC per MQTT message, which is one command
batch (a ``task.start`` carries many tasks), so the cost is one HMAC per batch.

The MAC is the envelope's last field, ``,"mac":"<64 hex>"}``, computed over the message
without it: the signer appends it without re-serialising, the verifier checks a fixed-size
tail, and receivers that know no key decode the envelope unchanged (the field is ignored).
"""

from __future__ import annotations

import hashlib
import hmac

_HEAD = b',"mac":"'
_TAIL = b'"}'
_MAC_HEX = 64
SIGNED_SUFFIX = len(_HEAD) + _MAC_HEX + len(_TAIL)


def _mac(key: bytes, unsigned: bytes) -> bytes:
    return hmac.new(key, unsigned, hashlib.sha256).hexdigest().encode()


def sign(key: bytes, message: bytes) -> bytes:
    """``message`` (an encoded envelope, ending in ``}``) with its MAC as the last field."""
    return message[:-1] + _HEAD + _mac(key, message) + _TAIL


def verify(key: bytes, signed: bytes) -> bool:
    """Whether ``signed`` carries a MAC made with ``key`` over the rest of it."""
    if len(signed) <= SIGNED_SUFFIX:
        return False
    tail = signed[-SIGNED_SUFFIX:]
    if not (tail.startswith(_HEAD) and tail.endswith(_TAIL)):
        return False
    unsigned = signed[:-SIGNED_SUFFIX] + b"}"
    given = tail[len(_HEAD) : -len(_TAIL)]
    return hmac.compare_digest(given, _mac(key, unsigned))
