"""Users, logins and tokens: what the ``/users``, ``/auth`` and ``/tokens`` routes do."""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from edgeplane.clock import Clock
from edgeplane.errors import Conflict, Invalid, NotFound, TooManyRequests, Unauthorized
from edgeplane.security.passwords import hash_password, verify
from edgeplane.security.ratelimit import RateLimiter
from edgeplane.security.roles import at_least, check_scopes, rank
from edgeplane.security.tokens import ADMIN_TOKEN_ID, TokenChecker, digest, generate
from edgeplane.store import Store, TokenRecord, UserRecord

#: An access token from a login lives this long; its refresh token, :data:`REFRESH_S`.
ACCESS_S = 15 * 60.0
REFRESH_S = 30 * 24 * 3600.0
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


def check_name(name: str, field: str) -> str:
    if not _NAME.match(name):
        raise Invalid(
            f"{field} {name!r}: lowercase letters, digits, '_', '.', '-', at most 63",
            field=field,
        )
    return name


@dataclass(frozen=True)
class Issued:
    """A token just made: its record and its secret (shown this once)."""

    record: TokenRecord
    secret: str


class Accounts:
    def __init__(self, store: Store, tokens: TokenChecker, clock: Clock) -> None:
        self.store = store
        self.tokens = tokens
        self.clock = clock
        #: per user and per client address: 5 failures a minute
        self.limiter = RateLimiter(clock)

    # users

    async def create_user(
        self, name: str, password: str, role: str, projects: Sequence[str]
    ) -> UserRecord:
        check_name(name, "name")
        if name == "admin":  # the admin token's user: a second one would share its tokens
            raise Invalid("the name 'admin' is reserved", field="name")
        rank(role)
        user = UserRecord(
            name=name,
            role=role,
            projects=tuple(dict.fromkeys(check_name(p, "projects") for p in projects)),
            password_hash=hash_password(password),
            created_at=self.clock.now(),
        )
        await self.store.add_user(user)
        return user

    async def existing_user(self, name: str, field: str) -> UserRecord:
        """The user ``name``; :class:`NotFound` naming ``field`` when there is none."""
        check_name(name, field)
        found = await self.store.get_user(name)
        if found is None:
            raise NotFound(f"no user {name!r}", field=field)
        return found

    async def delete_user(self, name: str) -> None:
        if not await self.store.delete_user(name):
            raise NotFound(f"no user {name!r}", field="name")
        self.tokens.forget_user(name)

    # logins

    async def login(self, name: str, password: str, client: str) -> tuple[Issued, Issued]:
        """An access and a refresh token; :class:`TooManyRequests` after too many failures
        for this user or from this address, :class:`Unauthorized` for a bad pair (the same
        answer whether the name exists or not)."""
        keys = (f"user:{name}", f"addr:{client}")
        wait = self.limiter.retry_after(*keys)
        if wait > 0:
            raise TooManyRequests("too many failed logins; try again later", retry_after=wait)
        user = await self.store.get_user(name)
        if not verify(user.password_hash if user else None, password) or user is None:
            self.limiter.failed(*keys)
            raise Unauthorized("wrong user name or password")
        self.limiter.succeeded(*keys)
        return await self._pair(user)

    async def refresh(self, secret: str) -> tuple[Issued, Issued]:
        """A new pair for a refresh token, which is used up (a stolen copy works once)."""
        record = await self.tokens.find(secret, ("refresh",))
        user = await self.store.get_user(record.user)
        await self.store.delete_token(record.id)
        self.tokens.forget(record.id)
        if user is None:
            raise Unauthorized("invalid token")
        return await self._pair(user)

    async def _pair(self, user: UserRecord) -> tuple[Issued, Issued]:
        access = await self._issue(user.name, user.role, (), user.projects, "access", ACCESS_S)
        refresh = await self._issue(user.name, user.role, (), user.projects, "refresh", REFRESH_S)
        return access, refresh

    # API tokens

    async def create_token(
        self,
        caller: TokenRecord,
        *,
        name: str,
        scopes: Sequence[str],
        expires_in: float | None,
        user: str | None,
    ) -> Issued:
        """A long-lived token of the caller's user (an admin may make one for another user);
        it never gets more than its user has."""
        owner = user or caller.user
        if owner != caller.user and not at_least(caller.role, "admin"):
            raise NotFound(f"no user {owner!r}", field="user")
        projects: tuple[str, ...] = ()
        if owner == "admin":
            role = "admin"
        else:
            found = await self.store.get_user(owner)
            if found is None:
                raise NotFound(f"no user {owner!r}", field="user")
            role, projects = found.role, found.projects
        wanted = check_scopes(scopes)
        widens = not wanted or any(s not in caller.scopes for s in wanted)
        if owner == caller.user and caller.scopes and widens:  # a scoped token stays narrow
            raise Invalid("scopes wider than the calling token's", field="scopes")
        return await self._issue(owner, role, wanted, projects, "api", expires_in, name)

    async def revoke(self, caller: TokenRecord, token_id: str) -> None:
        """Revoke a token; a user's own, or anyone's for an admin (404 for others': whether
        it exists is not theirs to know). Takes effect at once."""
        record = await self.store.get_token(token_id)
        if record is None or not (record.user == caller.user or caller.role == "admin"):
            raise NotFound(f"no token {token_id!r}", field="id")
        if record.id == ADMIN_TOKEN_ID:  # revoked, it would be back at the next start
            raise Conflict(
                "the admin token is changed by rotating it: delete the admin-token file (or "
                "change $EDGEPLANE_ADMIN_TOKEN) and restart",
                field="id",
            )
        await self.store.delete_token(token_id)
        self.tokens.forget(token_id)

    async def list_tokens(self, caller: TokenRecord, user: str | None) -> list[TokenRecord]:
        if caller.role != "admin":
            user = caller.user
        return await self.store.list_tokens(user=user)

    async def _issue(
        self,
        user: str,
        role: str,
        scopes: tuple[str, ...],
        projects: tuple[str, ...],
        kind: str,
        lifetime: float | None,
        name: str = "",
    ) -> Issued:
        now = self.clock.now()
        secret = generate()
        record = TokenRecord(
            id=f"tok_{secrets.token_hex(8)}",
            user=user,
            role=role,
            secret_hash=digest(secret),
            created_at=now,
            expires_at=None if lifetime is None else now + lifetime,
            scopes=scopes,
            projects=projects,
            kind=kind,
            name=name,
        )
        await self.store.save_token(record)
        return Issued(record, secret)
