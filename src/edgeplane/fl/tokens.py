"""Per-task client credentials: what lets one training task fetch its model and shard and
post its update, and nothing else.

``fl1.<payload>.<mac>``: the payload names the experiment, round, worker and task; the
mac is HMAC-SHA256 under the experiment's own secret (kept in its stored document, never
shown). The coordinator also checks that the task has not ended: the credential expires
with the task.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

import orjson

from edgeplane.errors import Unauthorized

PREFIX = "fl1."


@dataclass(frozen=True)
class Grant:
    experiment: str
    round: int
    worker: str
    task: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(secret: bytes, grant: Grant) -> str:
    payload = _b64(orjson.dumps([grant.experiment, grant.round, grant.worker, grant.task]))
    mac = _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())
    return f"{PREFIX}{payload}.{mac}"


def is_client_token(authorization: str | None) -> bool:
    return authorization is not None and authorization.startswith(f"Bearer {PREFIX}")


def grant_of(token: str) -> Grant:
    """The grant a token claims (its mac not checked yet: :func:`verify`)."""
    try:
        payload, _mac = token.removeprefix(PREFIX).split(".")
        exp, rnd, worker, task = orjson.loads(_unb64(payload))
        return Grant(str(exp), int(rnd), str(worker), str(task))
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise Unauthorized("not a federated learning client credential") from None


def verify(secret: bytes, token: str) -> Grant:
    grant = grant_of(token)
    payload, mac = token.removeprefix(PREFIX).split(".")
    want = _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(want, mac):
        raise Unauthorized("the client credential is not valid")
    return grant
