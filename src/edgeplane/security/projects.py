"""Who sees which project's resources (pure).

Admins see every project; anyone else only the projects of their token (their user's).
A resource of another project is answered 404, exactly as one that does not exist: a
403 would tell that it exists.
"""

from __future__ import annotations

from edgeplane.errors import NotFound
from edgeplane.store import TokenRecord


def visible(caller: TokenRecord) -> tuple[str, ...] | None:
    """The projects the caller sees; None: all of them."""
    return None if caller.role == "admin" else caller.projects


def sees(caller: TokenRecord, project: str) -> bool:
    return caller.role == "admin" or project in caller.projects


def check(caller: TokenRecord, project: str, what: str, ident: str) -> None:
    """:class:`NotFound` (the resource's own 404) unless the caller sees ``project``."""
    if not sees(caller, project):
        raise NotFound(f"{what} {ident} not found", field="id")


def check_new(caller: TokenRecord, project: str) -> None:
    """A resource may only be made in a project the caller sees."""
    if not sees(caller, project):
        raise NotFound(f"project {project!r} not found", field="project")
