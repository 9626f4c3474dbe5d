"""Roles, scopes and the policy of which role each API call needs (pure: no I/O).

Roles are ordered ``viewer`` < ``operator`` < ``admin``: viewers read, operators also
create, stop and delete tasks, jobs, workflows, schedules and applications, admins do
everything (users, other users' tokens, workers, join tokens). A token may carry
``scopes`` narrowing what it may do below its user's role: ``read`` (viewer's calls),
``write`` (operator's), ``admin`` (admin's); no scopes means all its role allows.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from edgeplane.errors import Invalid

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
#: The scope each role's calls need, in the same order.
SCOPES: tuple[str, ...] = ("read", "write", "admin")
_SCOPE_OF: dict[str, str] = dict(zip(ROLES, SCOPES, strict=True))

API = "/api/v1"
#: Reachable without a token (each one checks its own credentials).
PUBLIC = frozenset({f"{API}/auth/login", f"{API}/auth/refresh"})
#: Admin's alone, reads included: who the users are, the secrets workers join with, who
#: did what (the audit log).
_ADMIN_ALWAYS = ("/users", "/join-tokens", "/audit")
#: The fleet: everyone reads it, admins change it.
_ADMIN_TO_CHANGE = ("/workers",)
_READS = frozenset({"GET", "HEAD", "OPTIONS"})


def rank(role: str) -> int:
    """The role's place in the order; :class:`Invalid` for an unknown role."""
    if role not in ROLES:
        raise Invalid(f"unknown role {role!r} (one of {', '.join(ROLES)})", field="role")
    return ROLES.index(role)


def at_least(role: str, needed: str) -> bool:
    return rank(role) >= rank(needed)


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Scopes as given, each known and once; :class:`Invalid` naming ``scopes`` otherwise."""
    seen: list[str] = []
    for scope in scopes:
        if scope not in SCOPES:
            raise Invalid(f"unknown scope {scope!r} (one of {', '.join(SCOPES)})", field="scopes")
        if scope not in seen:
            seen.append(scope)
    return tuple(seen)


def allows(role: str, scopes: Iterable[str], needed: str) -> bool:
    """Whether a token of ``role`` with ``scopes`` (empty: all) may make a call ``needed``
    the role."""
    wanted = tuple(scopes)
    return at_least(role, needed) and (not wanted or _SCOPE_OF[needed] in wanted)


def required(method: str, path: str) -> Role:
    """The least role a call to ``method path`` (under ``/api/v1``) needs.

    Users, join tokens and the audit log need an admin, reads included; other reads a
    viewer; mutations an operator, except on workers (admin). Tokens are every user's
    own: a viewer may create and revoke their own (the route checks whose token it is,
    admin for other users').
    """
    rest = path[len(API) :] if path.startswith(API) else path
    if _under(rest, _ADMIN_ALWAYS):
        return "admin"
    if _under(rest, ("/tokens",)) or method.upper() in _READS:
        return "viewer"
    if _under(rest, _ADMIN_TO_CHANGE):
        return "admin"
    return "operator"


def _under(rest: str, collections: tuple[str, ...]) -> bool:
    return any(rest == part or rest.startswith(part + "/") for part in collections)
