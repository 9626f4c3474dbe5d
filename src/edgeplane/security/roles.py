"""Roles, scopes and the policy of which role each API call needs (pure: no I/O).

Roles are ordered ``viewer`` < ``operator`` < ``admin``: viewers read, operators also
create, stop and delete tasks, jobs, workflows, schedules and applications, admins do
everything (users, other users' tokens, workers, join tokens). A token may carry
``scopes`` narrowing what it may do below its user's role: ``read`` (viewer's calls),
``write`` (operator's), ``admin`` (admin's); no scopes means all its role allows.

A node (worker) may have an ``owner``, a user who, whatever their role, may do on that
node what an admin may (:func:`node_of` says which calls): ParaDrop's model, where the
owner of a node manages what runs on it. :func:`check` is the whole decision.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

from edgeplane.errors import Forbidden, Invalid

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
_ADMIN_TO_CHANGE = ("/workers", "/clusters")
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
_NODES = "/workers/"
#: Under a node, what its owner may call besides the node itself (``DELETE``, ``PATCH``
#: ``/workers/{id}``): these sub-paths and everything below them. Anything else under
#: a node (its ``owner`` first of all) stays an admin's.
OWNER_MANAGES = ("drain", "undrain", "labels", "chutes", "changes")
#: The scope an owner's token needs for those calls, when it has scopes.
OWNER_SCOPE = "write"


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
    viewer; mutations an operator, except on workers and clusters (admin). Tokens are every
    user's own: a viewer may create and revoke their own (the route checks whose token it
    is, admin for other users').
    """
    rest = path[len(API) :] if path.startswith(API) else path
    if _under(rest, _ADMIN_ALWAYS):
        return "admin"
    if _under(rest, ("/tokens",)) or method.upper() in _READS:
        return "viewer"
    if _under(rest, _ADMIN_TO_CHANGE):
        return "admin"
    return "operator"


def node_of(path: str) -> str | None:
    """The node (worker id) whose owner may call ``path``, or None: ``/workers/{id}``
    itself and ``/workers/{id}/{x}…`` for ``x`` in :data:`OWNER_MANAGES`."""
    rest = path[len(API) :] if path.startswith(API) else path
    if not rest.startswith(_NODES):
        return None
    node, _, below = rest[len(_NODES) :].partition("/")
    if not node or (below and below.split("/", 1)[0] not in OWNER_MANAGES):
        return None
    if any(part in (".", "..") for part in rest.split("/")):
        return None  # nothing routes such a path today; a later route must not see one
    return node


def check(
    method: str,
    path: str,
    *,
    role: str,
    scopes: Iterable[str],
    user: str,
    owner_of: Callable[[str], str | None],
) -> None:
    """:class:`Forbidden` unless a token of ``user`` (``role``, ``scopes``) may call
    ``method path``: its role allows it (:func:`required`, :func:`allows`), or the call
    is on a node ``user`` owns (:func:`node_of`, ``owner_of(node)``) and its scopes, if
    any, include :data:`OWNER_SCOPE`. The owner is looked up only when the role does not
    suffice, so a call the role allows costs no lookup."""
    wanted = tuple(scopes)
    needed = required(method, path)
    if allows(role, wanted, needed):
        return
    node = None if method.upper() in _READS else node_of(path)
    if node is not None and user and owner_of(node) == user:
        if not wanted or OWNER_SCOPE in wanted:
            return
        raise Forbidden(f"this call on your node {node} needs the {OWNER_SCOPE} scope")
    raise Forbidden(f"this call needs the {needed} role (and scope)")


def _under(rest: str, collections: tuple[str, ...]) -> bool:
    return any(rest == part or rest.startswith(part + "/") for part in collections)
