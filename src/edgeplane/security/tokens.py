"""API tokens: random secrets handed to users once; only their sha256 is stored.

Tokens are 256-bit random, so a fast hash is enough (no dictionary to attack); lookups
compare digests in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from edgeplane.errors import Unauthorized
from edgeplane.store import Store, TokenRecord

ADMIN_TOKEN_FILE = "admin-token"


def generate() -> str:
    return "ep_" + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def ensure_admin_token(
    store: Store, data_dir: Path, given: str | None, now: float
) -> Path | None:
    """Make the admin token valid. Returns the file holding it, or None when it came from env.

    ``given`` (``$EDGEPLANE_ADMIN_TOKEN``) wins; else ``<data-dir>/admin-token`` is reused or
    created with mode 0600.
    """
    path: Path | None = None
    if given:
        secret = given
    else:
        path = data_dir / ADMIN_TOKEN_FILE
        secret = _read_or_create(path)
    await store.save_token(
        TokenRecord(
            id="admin", user="admin", role="admin", secret_hash=digest(secret), created_at=now
        )
    )
    return path


def _read_or_create(path: Path) -> str:
    """The secret kept in ``path``, created (mode 0600) on first use."""
    if path.exists():
        return path.read_text().strip()
    secret = generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret


class TokenChecker:
    """Checks bearer tokens against the store, caching known digests."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._known: dict[str, TokenRecord] = {}

    async def check(self, authorization: str | None) -> TokenRecord:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
        wanted = digest(authorization[7:].strip())
        record = self._known.get(wanted)
        if record is None:
            record = await self._store.find_token(wanted)
            if record is None:
                raise Unauthorized("invalid token")
            self._known[wanted] = record
        if not hmac.compare_digest(record.secret_hash, wanted):
            raise Unauthorized("invalid token")
        return record

    def forget(self, token_id: str) -> None:
        self._known = {h: r for h, r in self._known.items() if r.id != token_id}
