"""Accounts on a memory store and a manual clock: logins, refresh, tokens, revocation."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeplane.clock import ManualClock
from edgeplane.errors import Conflict, Invalid, NotFound, TooManyRequests, Unauthorized
from edgeplane.security.accounts import ACCESS_S, Accounts
from edgeplane.security.tokens import TokenChecker, ensure_admin_token
from edgeplane.store import MemoryStore, TokenRecord

PASSWORD = "correct horse"


@pytest.fixture
async def accounts() -> Accounts:
    store, clock = MemoryStore(), ManualClock()
    made = Accounts(store, TokenChecker(store, clock), clock)
    await made.create_user("ann", PASSWORD, "operator", ["lab"])
    await made.create_user("bob", PASSWORD, "viewer", ["default"])
    return made


async def test_a_login_gives_a_short_access_and_a_one_time_refresh(accounts: Accounts) -> None:
    access, refresh = await accounts.login("ann", PASSWORD, "10.0.0.1")
    found = await accounts.tokens.check(f"Bearer {access.secret}")
    assert (found.user, found.role, found.projects, found.kind) == (
        "ann",
        "operator",
        ("lab",),
        "access",
    )
    with pytest.raises(Unauthorized):  # a refresh token is no bearer token
        await accounts.tokens.check(f"Bearer {refresh.secret}")
    again, _ = await accounts.refresh(refresh.secret)
    assert (await accounts.tokens.check(f"Bearer {again.secret}")).user == "ann"
    with pytest.raises(Unauthorized):  # used up
        await accounts.refresh(refresh.secret)
    assert isinstance(accounts.clock, ManualClock)
    accounts.clock.advance(ACCESS_S)
    with pytest.raises(Unauthorized, match="expired"):
        await accounts.tokens.check(f"Bearer {again.secret}")


async def test_failed_logins_are_limited_per_user_and_per_address(accounts: Accounts) -> None:
    for n in range(5):
        with pytest.raises(Unauthorized):
            await accounts.login("ann", "wrong", f"10.0.0.{n}")  # five addresses, one user
    with pytest.raises(TooManyRequests) as limited:
        await accounts.login("ann", PASSWORD, "10.0.0.9")
    assert limited.value.retry_after == 60.0
    for _ in range(5):
        with pytest.raises(Unauthorized):
            await accounts.login("nobody", "wrong", "10.9.9.9")  # one address, no such user
    with pytest.raises(TooManyRequests):
        await accounts.login("bob", PASSWORD, "10.9.9.9")
    assert isinstance(accounts.clock, ManualClock)
    accounts.clock.advance(60.0)
    await accounts.login("ann", PASSWORD, "10.0.0.9")


async def test_tokens_never_get_more_than_their_maker(accounts: Accounts) -> None:
    access, _ = await accounts.login("ann", PASSWORD, "a")
    ann = await accounts.tokens.check(f"Bearer {access.secret}")
    reader = await accounts.create_token(
        ann, name="ro", scopes=["read"], expires_in=None, user=None
    )
    assert (reader.record.scopes, reader.record.expires_at) == (("read",), None)
    narrow = reader.record
    with pytest.raises(Invalid):  # a read token cannot make a write one, nor an unscoped one
        await accounts.create_token(narrow, name="", scopes=["write"], expires_in=None, user=None)
    with pytest.raises(Invalid):
        await accounts.create_token(narrow, name="", scopes=[], expires_in=None, user=None)
    with pytest.raises(NotFound):  # another user's: only an admin
        await accounts.create_token(ann, name="", scopes=[], expires_in=None, user="bob")
    admin = TokenRecord("admin", "admin", "admin", "h", 0.0)
    bobs = await accounts.create_token(admin, name="", scopes=[], expires_in=60.0, user="bob")
    assert (bobs.record.user, bobs.record.role, bobs.record.projects) == (
        "bob",
        "viewer",
        ("default",),
    )
    with pytest.raises(NotFound):  # ann may not even see bob's token
        await accounts.revoke(ann, bobs.record.id)
    await accounts.revoke(admin, bobs.record.id)
    with pytest.raises(Unauthorized):
        await accounts.tokens.check(f"Bearer {bobs.secret}")


async def test_the_admin_token_is_rotated_not_revoked(accounts: Accounts, tmp_path: Path) -> None:
    await ensure_admin_token(accounts.store, tmp_path, "x" * 40, 0.0)
    admin = await accounts.tokens.check("Bearer " + "x" * 40)
    with pytest.raises(Conflict):
        await accounts.revoke(admin, "admin")


async def test_deleting_a_user_cuts_their_tokens_at_once(accounts: Accounts) -> None:
    access, _ = await accounts.login("bob", PASSWORD, "a")
    await accounts.tokens.check(f"Bearer {access.secret}")  # now cached
    await accounts.delete_user("bob")
    with pytest.raises(Unauthorized):
        await accounts.tokens.check(f"Bearer {access.secret}")
    with pytest.raises(NotFound):
        await accounts.delete_user("bob")


async def test_names_and_roles_are_checked(accounts: Accounts) -> None:
    for name, role, field in (
        ("Ann Smith", "viewer", "name"),
        ("admin", "viewer", "name"),
        ("eve", "root", "role"),
    ):
        with pytest.raises(Invalid) as bad:
            await accounts.create_user(name, PASSWORD, role, [])
        assert bad.value.field == field
    with pytest.raises(Conflict):
        await accounts.create_user("ann", PASSWORD, "viewer", [])
