"""The owner rule of the policy (``roles.check``, ``roles.node_of``) and the second names
of body fields (``api.aliases``), without a server."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from edgeplane.api.join_tokens import JoinTokenRequest
from edgeplane.api.users import Login, TokenCreate, UserCreate
from edgeplane.errors import Forbidden, Invalid
from edgeplane.security.roles import (
    OWNER_MANAGES,
    ROLES,
    SCOPES,
    allows,
    check,
    node_of,
    required,
)

OWNERS = {"n1": "ann", "n2": "bob"}
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def may(method: str, path: str, role: str, user: str, scopes: tuple[str, ...] = ()) -> bool:
    try:
        check(method, path, role=role, scopes=scopes, user=user, owner_of=OWNERS.get)
    except Forbidden:
        return False
    return True


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/workers/n1/drain"),
        ("POST", "/api/v1/workers/n1/undrain"),
        ("DELETE", "/api/v1/workers/n1"),
        ("PATCH", "/api/v1/workers/n1"),
        ("PUT", "/api/v1/workers/n1/labels"),
        ("POST", "/api/v1/workers/n1/chutes"),
        ("DELETE", "/api/v1/workers/n1/chutes/c/x"),
        ("POST", "/api/v1/workers/n1/changes"),
        ("POST", "/api/v1/workers/n1/changes/7/stop"),
    ],
)
def test_the_owner_may_what_an_admin_may_on_their_node_only(method: str, path: str) -> None:
    assert node_of(path) == "n1"
    for role in ROLES:
        assert may(method, path, role, "ann")  # a viewer too
        assert may(method, path, role, "ann", ("write",))
        assert not may(method, path, role, "ann", ("read",))  # scopes still narrow
    assert not may(method, path, "viewer", "bob")  # another's node
    assert not may(method, path, "operator", "bob")
    assert not may(method, path, "operator", "nobody")
    assert may(method, path, "admin", "bob")
    assert not may(method, path, "admin", "bob", ("write",))  # admin's scope, not owner's


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/api/v1/workers/n1/owner"),  # ownership itself is an admin's
        ("POST", "/api/v1/workers/n1/other"),
        ("POST", "/api/v1/workers"),
        ("POST", "/api/v1/workers/"),
        ("POST", "/api/v1/workers-n1/drain"),
        ("POST", "/api/v1/join-tokens"),
        ("DELETE", "/api/v1/users/ann"),
        ("PUT", "/api/v1/workers/n1/chutes/../owner"),
        ("DELETE", "/api/v1/workers/../users/bob"),
    ],
)
def test_owning_a_node_gives_nothing_else(method: str, path: str) -> None:
    for role in ROLES:  # exactly what the role gives
        assert may(method, path, role, "ann") == allows(role, (), required(method, path))
    assert not may(method, path, "viewer", "ann")


def test_an_owners_token_reads_only_what_its_scopes_allow() -> None:
    # the owner rule is for changes: a write-only token does not gain reads through it
    assert not may("GET", "/api/v1/workers/n1", "viewer", "ann", ("write",))
    assert may("GET", "/api/v1/workers/n1", "viewer", "ann", ("read",))


def test_the_owner_is_looked_up_only_when_the_role_does_not_suffice() -> None:
    asked: list[str] = []

    def owner_of(node: str) -> str | None:
        asked.append(node)
        return None

    check("POST", "/api/v1/workers/n9/drain", role="admin", scopes=(), user="a", owner_of=owner_of)
    check("GET", "/api/v1/workers/n9", role="viewer", scopes=(), user="v", owner_of=owner_of)
    assert asked == []
    with pytest.raises(Forbidden):
        check(
            "POST",
            "/api/v1/workers/n9/drain",
            role="viewer",
            scopes=(),
            user="v",
            owner_of=owner_of,
        )
    assert asked == ["n9"]


def test_a_node_without_owner_or_a_user_without_name_owns_nothing() -> None:
    # a node nobody owns is None; a token's user is never "" but the rule must not match it
    owners = {"n1": None}
    assert not any(_may_with(owners, "viewer", user) for user in ("", "ann"))


def _may_with(owners: dict[str, Any], role: str, user: str) -> bool:
    try:
        check(
            "POST", "/api/v1/workers/n1/drain", role=role, scopes=(), user=user, owner_of=owners.get
        )
    except Forbidden:
        return False
    return True


_segment = st.sampled_from(["workers", "n1", "n2", "drain", "owner", "chutes", "tasks", "x", ""])


@given(
    st.sampled_from(METHODS),
    st.lists(_segment, max_size=5),
    st.sampled_from(ROLES),
    st.lists(st.sampled_from(SCOPES), max_size=3, unique=True),
    st.sampled_from(["ann", "bob", "eve"]),
)
def test_the_owner_rule_only_ever_adds_changes_to_the_users_own_node(
    method: str, parts: list[str], role: str, scopes: list[str], user: str
) -> None:
    path = "/api/v1/" + "/".join(parts)
    by_role = allows(role, scopes, required(method, path))
    allowed = may(method, path, role, user, tuple(scopes))
    assert allowed >= by_role  # it never takes a right away
    if allowed and not by_role:  # what it adds: a change, on a node of theirs, with write
        node = node_of(path)
        assert method != "GET" and node is not None and OWNERS.get(node) == user
        assert not scopes or "write" in scopes
        below = path.removeprefix(f"/api/v1/workers/{node}").lstrip("/").split("/")[0]
        assert below == "" or below in OWNER_MANAGES


# ---------------------------------------------------------------- second names of fields


@pytest.mark.parametrize(
    ("model", "body", "field", "value"),
    [
        (UserCreate, {"username": "ann", "password": "x" * 8}, "name", "ann"),
        (UserCreate, {"name": "ann", "password": "x" * 8}, "name", "ann"),
        (Login, {"username": "ann", "password": "p"}, "name", "ann"),
        (Login, {"name": "ann", "password": "p"}, "name", "ann"),
        (TokenCreate, {"expires_in_s": 60}, "expires_in", 60.0),
        (TokenCreate, {"expires_in": 60}, "expires_in", 60.0),
        (TokenCreate, {}, "expires_in", None),
        (JoinTokenRequest, {"expires_in_s": 60}, "ttl_s", 60.0),
        (JoinTokenRequest, {"ttl_s": 60}, "ttl_s", 60.0),
        (JoinTokenRequest, {}, "ttl_s", 3600.0),
    ],
)
def test_either_name_of_a_field_is_read(
    model: Any, body: dict[str, Any], field: str, value: object
) -> None:
    assert getattr(model.model_validate(body), field) == value


@pytest.mark.parametrize(
    ("model", "body", "field"),
    [
        (UserCreate, {"username": "a", "name": "b", "password": "x" * 8}, "name"),
        (Login, {"username": "a", "name": "a", "password": "p"}, "name"),
        (TokenCreate, {"expires_in_s": 60, "expires_in": 60}, "expires_in"),
        (JoinTokenRequest, {"expires_in_s": 60, "ttl_s": 60}, "ttl_s"),
    ],
)
def test_both_names_at_once_are_refused_naming_the_field(
    model: Any, body: dict[str, Any], field: str
) -> None:
    with pytest.raises(Invalid) as both:
        model.model_validate(body)
    assert both.value.field == field


def test_the_second_name_has_the_first_ones_bounds() -> None:
    with pytest.raises(ValidationError):
        JoinTokenRequest.model_validate({"expires_in_s": 0})
    with pytest.raises(ValidationError):
        TokenCreate.model_validate({"expires_in_s": 10**12})
    with pytest.raises(ValidationError):  # still no stray fields on a join token
        JoinTokenRequest.model_validate({"expires_in_s": 5, "ttl": 5})
