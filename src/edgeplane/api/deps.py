"""Request dependencies: the manager and the caller's token."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from edgeplane.manager import Manager
from edgeplane.security import TokenChecker
from edgeplane.store import TokenRecord


async def manager(request: Request) -> Manager:
    # async: a plain def would be sent through the thread pool on every request
    found: Manager = request.app.state.manager
    return found


async def caller(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> TokenRecord:
    checker: TokenChecker = request.app.state.tokens
    return await checker.check(authorization)


ManagerDep = Annotated[Manager, Depends(manager)]
