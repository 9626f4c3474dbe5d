"""The pure parts of security: role order, scopes, the route policy, the login limiter
(injected clock), passwords, the token cache, the admin-token file, store file modes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeplane.clock import ManualClock
from edgeplane.errors import Invalid, Unauthorized
from edgeplane.security.files import secure_data_dir
from edgeplane.security.passwords import hash_password, verify
from edgeplane.security.projects import sees, visible
from edgeplane.security.ratelimit import RateLimiter
from edgeplane.security.roles import ROLES, allows, at_least, check_scopes, rank, required
from edgeplane.security.tokens import (
    ADMIN_TOKEN_ID,
    TokenChecker,
    WeakAdminToken,
    digest,
    ensure_admin_token,
)
from edgeplane.store import MemoryStore, TokenRecord


def test_roles_are_ordered() -> None:
    assert [rank(r) for r in ROLES] == [0, 1, 2]
    assert at_least("admin", "operator") and at_least("operator", "operator")
    assert not at_least("viewer", "operator")
    with pytest.raises(Invalid) as unknown:
        rank("root")
    assert unknown.value.field == "role"


@given(st.sampled_from(ROLES), st.sampled_from(ROLES))
def test_no_scopes_is_exactly_the_role(role: str, needed: str) -> None:
    assert allows(role, (), needed) == (rank(role) >= rank(needed))


def test_scopes_narrow_a_role_and_never_widen_it() -> None:
    assert allows("admin", ("read",), "viewer")
    assert not allows("admin", ("read",), "operator")
    assert allows("operator", ("read", "write"), "operator")
    assert not allows("viewer", ("read", "write", "admin"), "operator")
    assert check_scopes(["read", "read", "write"]) == ("read", "write")
    with pytest.raises(Invalid) as bad:
        check_scopes(["everything"])
    assert bad.value.field == "scopes"


@pytest.mark.parametrize(
    ("method", "path", "role"),
    [
        ("GET", "/api/v1/tasks", "viewer"),
        ("GET", "/api/v1/tasks/t1/logs", "viewer"),
        ("POST", "/api/v1/tasks", "operator"),
        ("DELETE", "/api/v1/schedules/s", "operator"),
        ("PUT", "/api/v1/applications/a", "operator"),
        ("GET", "/api/v1/workers", "viewer"),
        ("POST", "/api/v1/workers/w/drain", "admin"),
        ("DELETE", "/api/v1/workers/w", "admin"),
        ("POST", "/api/v1/join-tokens", "admin"),
        ("GET", "/api/v1/join-tokens", "admin"),
        ("GET", "/api/v1/users", "admin"),
        ("POST", "/api/v1/users", "admin"),
        ("POST", "/api/v1/tokens", "viewer"),
        ("DELETE", "/api/v1/tokens/x", "viewer"),
        ("POST", "/api/v1/userships", "operator"),  # a prefix is not the collection
    ],
)
def test_each_call_needs_its_role(method: str, path: str, role: str) -> None:
    assert required(method, path) == role


def test_projects_seen() -> None:
    admin = TokenRecord("a", "admin", "admin", "h", 0.0)
    ann = TokenRecord("b", "ann", "operator", "h", 0.0, projects=("lab",))
    assert visible(admin) is None and visible(ann) == ("lab",)
    assert sees(admin, "anything") and sees(ann, "lab") and not sees(ann, "default")


def test_the_limiter_refuses_past_the_attempts_until_the_window_passes() -> None:
    clock = ManualClock()
    limiter = RateLimiter(clock, attempts=3, window=60.0)
    for _ in range(3):
        assert limiter.retry_after("user:ann", "addr:1") == 0
        limiter.failed("user:ann", "addr:1")
    assert limiter.retry_after("user:ann") == 60.0
    assert limiter.retry_after("addr:1", "user:bob") == 60.0  # any key limited: wait
    assert limiter.retry_after("user:bob") == 0
    clock.advance(59.0)
    assert limiter.retry_after("user:ann") == pytest.approx(1.0)
    clock.advance(1.0)
    assert limiter.retry_after("user:ann") == 0
    limiter.failed("user:ann")
    limiter.succeeded("user:ann")
    assert limiter.retry_after("user:ann") == 0


def test_passwords_hash_with_argon2_and_verify() -> None:
    hashed = hash_password("correct horse")
    assert hashed.startswith("$argon2id$")
    assert verify(hashed, "correct horse")
    assert not verify(hashed, "wrong horse")
    assert not verify(None, "correct horse")  # no such user: same answer
    assert not verify("not a hash", "x")
    with pytest.raises(Invalid) as short:
        hash_password("short")
    assert short.value.field == "password"


async def test_tokens_are_cached_expire_and_revoke_at_once() -> None:
    store, clock = MemoryStore(), ManualClock()
    checker = TokenChecker(store, clock)
    record = TokenRecord("t", "ann", "viewer", digest("s3cret"), 0.0, clock.now() + 100.0)
    await store.save_token(record)
    assert await checker.check("Bearer s3cret") == record
    await store.delete_token("t")  # another process: the cache holds it a short while
    assert await checker.check("Bearer s3cret") == record
    checker.forget("t")  # revocation here: at once
    with pytest.raises(Unauthorized):
        await checker.check("Bearer s3cret")

    await store.save_token(record)
    clock.advance(100.0)
    with pytest.raises(Unauthorized, match="expired"):
        await checker.check("Bearer s3cret")
    refresh = TokenRecord("r", "ann", "viewer", digest("r3fresh"), 0.0, kind="refresh")
    await store.save_token(refresh)
    with pytest.raises(Unauthorized):  # a refresh token is no access token
        await checker.check("Bearer r3fresh")
    assert await checker.find("r3fresh", ("refresh",)) == refresh
    with pytest.raises(Unauthorized):
        await checker.check(None)


async def test_an_admin_token_file_readable_by_others_or_weak_is_refused(tmp_path: Path) -> None:
    store = MemoryStore()
    made = await ensure_admin_token(store, tmp_path, None, 0.0)
    assert made is not None and stat.S_IMODE(made.stat().st_mode) == 0o600
    assert await ensure_admin_token(store, tmp_path, None, 0.0) == made  # kept
    made.chmod(0o644)
    with pytest.raises(WeakAdminToken, match="readable by others"):
        await ensure_admin_token(store, tmp_path, None, 0.0)
    made.write_text("short\n")
    made.chmod(0o600)
    with pytest.raises(WeakAdminToken, match="under 32"):
        await ensure_admin_token(store, tmp_path, None, 0.0)


async def test_processes_of_one_cluster_share_one_admin_token(tmp_path: Path) -> None:
    """A second process (another home) with no token of its own adopts the first's
    instead of replacing it; deleting the file in the first's own home still rotates."""
    store = MemoryStore()
    one, two = tmp_path / "one", tmp_path / "two"
    made = await ensure_admin_token(store, one, None, 0.0, "host:one")
    assert made is not None
    first = await store.get_token(ADMIN_TOKEN_ID)
    assert await ensure_admin_token(store, two, None, 1.0, "host:two") is None
    assert await store.get_token(ADMIN_TOKEN_ID) == first
    assert not (two / "admin-token").exists()
    made.unlink()  # rotation, in the home that made it
    assert await ensure_admin_token(store, one, None, 2.0, "host:one") == made
    rotated = await store.get_token(ADMIN_TOKEN_ID)
    assert rotated is not None and first is not None
    assert rotated.secret_hash != first.secret_hash


def test_store_files_are_the_owners_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    database = data / "edgeplane.db"
    wal = Path(f"{database}-wal")
    wal.write_text("")
    wal.chmod(0o644)  # as an older version left it
    old = os.umask(0o022)
    try:
        secure_data_dir(data, f"sqlite:///{database}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert stat.S_IMODE(wal.stat().st_mode) == 0o600
