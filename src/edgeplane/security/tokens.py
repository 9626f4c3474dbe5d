"""Tokens: random secrets handed to users once; only their sha256 is stored.

Tokens are 256-bit random, so a fast hash is enough (no dictionary to attack); lookups
compare digests in constant time. Passwords (``passwords.py``) are the only secrets that
pay for argon2, and only at login.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from pathlib import Path

from edgeplane.clock import Clock, SystemClock
from edgeplane.errors import EdgeplaneError, Unauthorized
from edgeplane.store import Store, TokenRecord

log = logging.getLogger(__name__)

ADMIN_TOKEN_FILE = "admin-token"
#: The id of the admin token kept from the file or $EDGEPLANE_ADMIN_TOKEN.
ADMIN_TOKEN_ID = "admin"
#: A token shorter than this (one given by hand) is too easy to guess.
MIN_TOKEN_LENGTH = 32
#: How long a verified token is trusted without asking the store again. Revocation and
#: user deletion in this process clear it at once; expiry is checked on every request.
CACHE_S = 10.0


class WeakAdminToken(EdgeplaneError):
    """The admin-token file is readable by others or too short: refused at start."""

    status = 422
    title = "Weak admin token"


def generate() -> str:
    return "ep_" + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def ensure_admin_token(
    store: Store, data_dir: Path, given: str | None, now: float, home: str = ""
) -> Path | None:
    """Make the admin token valid. Returns the file holding it, or None when it came from
    env or from another process of the cluster.

    ``given`` (``$EDGEPLANE_ADMIN_TOKEN``) wins; else ``<data-dir>/admin-token`` is reused or
    created with mode 0600. A file others may read, or holding a token under
    :data:`MIN_TOKEN_LENGTH` characters, is refused (:class:`WeakAdminToken`): whoever read
    it may be admin already, so only the operator can decide to rotate it (delete the file).

    Several processes of one cluster share the store, so they share one admin token: a
    process ``home`` (host and data dir) with neither ``given`` nor a file adopts the one
    another home made instead of replacing it (which would lock that process's users out).
    """
    path: Path | None = None
    stored = await store.get_token(ADMIN_TOKEN_ID)
    made_elsewhere = stored is not None and stored.name not in ("", home)
    if given:
        secret = given
        if len(secret) < MIN_TOKEN_LENGTH:  # the operator chose it: said, not refused
            log.warning(
                "EDGEPLANE_ADMIN_TOKEN is under %d characters: easy to guess", MIN_TOKEN_LENGTH
            )
    elif made_elsewhere and not (data_dir / ADMIN_TOKEN_FILE).exists():
        assert stored is not None
        log.info(
            "using the admin token another process of this cluster made (%s): copy its "
            "admin-token file here or set EDGEPLANE_ADMIN_TOKEN to use it from this host",
            stored.name,
        )
        return None
    else:
        path = data_dir / ADMIN_TOKEN_FILE
        secret = _read_or_create(path)
    if made_elsewhere and stored is not None and stored.secret_hash != digest(secret):
        log.warning(
            "replacing the admin token another process of this cluster made (%s): its "
            "admin token stops working; give every process the same one",
            stored.name,
        )
    await store.save_token(
        TokenRecord(
            id=ADMIN_TOKEN_ID,
            user="admin",
            role="admin",
            secret_hash=digest(secret),
            created_at=now,
            name=home,
        )
    )
    return path


def _read_or_create(path: Path) -> str:
    """The secret kept in ``path``, created (mode 0600) on first use."""
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise WeakAdminToken(
                f"{path} is readable by others (mode {mode:04o}): anyone who read it may be "
                "admin; delete it to have a new token made, or chmod 600 it to keep it",
                field="admin_token",
            )
        secret = path.read_text().strip()
        if len(secret) < MIN_TOKEN_LENGTH:
            raise WeakAdminToken(
                f"{path} holds a token under {MIN_TOKEN_LENGTH} characters; delete it to "
                "have a strong one made",
                field="admin_token",
            )
        return secret
    secret = generate()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret


def bearer(authorization: str | None) -> str:
    """The secret of an ``Authorization: Bearer`` header; :class:`Unauthorized` without."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    return authorization[7:].strip()


class TokenChecker:
    """Checks bearer tokens against the store, keeping verified ones for :data:`CACHE_S`.

    On the path of every request: a cached token costs a sha256 and a dict lookup.
    """

    def __init__(self, store: Store, clock: Clock | None = None) -> None:
        self._store = store
        self._clock = clock or SystemClock()
        self._known: dict[str, tuple[TokenRecord, float]] = {}

    async def check(
        self, authorization: str | None, kinds: tuple[str, ...] = ("api", "access")
    ) -> TokenRecord:
        """The token of the header, if valid and of one of ``kinds`` (a refresh token is
        only good at ``/auth/refresh``)."""
        return await self.find(bearer(authorization), kinds)

    async def find(self, secret: str, kinds: tuple[str, ...]) -> TokenRecord:
        wanted = digest(secret)
        cached = self._known.get(wanted)
        record = None
        if cached is not None and self._clock.monotonic() - cached[1] < CACHE_S:
            record = cached[0]
        if record is None:
            record = await self._store.find_token(wanted)
            if record is None:
                self._known.pop(wanted, None)
                raise Unauthorized("invalid token")
            if len(self._known) > 10_000:  # bounded: a flood of valid tokens cannot grow it
                self._known.clear()
            self._known[wanted] = (record, self._clock.monotonic())
        if not hmac.compare_digest(record.secret_hash, wanted) or record.kind not in kinds:
            raise Unauthorized("invalid token")
        if record.expires_at is not None and self._clock.now() >= record.expires_at:
            raise Unauthorized("token expired")
        return record

    def forget(self, token_id: str) -> None:
        self._known = {h: r for h, r in self._known.items() if r[0].id != token_id}

    def forget_user(self, user: str) -> None:
        self._known = {h: r for h, r in self._known.items() if r[0].user != user}
