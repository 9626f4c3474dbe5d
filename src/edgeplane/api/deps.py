"""Request dependencies: the manager and the caller's token."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from edgeplane.manager import Manager
from edgeplane.security import TokenChecker
from edgeplane.store import TokenRecord

#: Declares the bearer scheme in OpenAPI; the token is checked by :func:`caller` (and,
#: before any body is read, by ``edgeplane.api.app.Authenticate``).
#: Where ``Authenticate`` leaves the caller's token in the request's scope state.
CALLER = "edgeplane.caller"
_bearer = HTTPBearer(auto_error=False, description="An API token: `Authorization: Bearer TOKEN`")
#: For routes that read the bearer credential themselves (a training task's): declares it
#: in the schema like every other route, checks nothing.
BearerDeclared = Depends(_bearer)


async def manager(request: Request) -> Manager:
    # async: a plain def would be sent through the thread pool on every request
    found: Manager = request.app.state.manager
    return found


async def caller(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> TokenRecord:
    """The caller's token, as ``Authenticate`` found it (checked again when a test mounts
    the routes without it)."""
    found: TokenRecord | None = request.scope.get("state", {}).get(CALLER)
    if found is not None:
        return found
    checker: TokenChecker = request.app.state.tokens
    return await checker.check(request.headers.get("authorization"))


ManagerDep = Annotated[Manager, Depends(manager)]
CallerDep = Annotated[TokenRecord, Depends(caller)]
