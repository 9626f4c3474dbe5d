"""/api/v1/users (admin), /api/v1/auth (login, refresh: no token needed), /api/v1/tokens."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field, model_validator

from edgeplane.api import problems
from edgeplane.api.aliases import either, one_of
from edgeplane.api.audit import note
from edgeplane.api.deps import CallerDep
from edgeplane.api.routing import JsonRoute
from edgeplane.limits import MAX_NAME
from edgeplane.manager import Manager
from edgeplane.security.accounts import Accounts, Issued
from edgeplane.security.broker_auth import BrokerAuth
from edgeplane.security.roles import Role
from edgeplane.store import TokenRecord, UserRecord

users = APIRouter(prefix="/users", tags=["users"], route_class=JsonRoute)
auth = APIRouter(prefix="/auth", tags=["auth"], route_class=JsonRoute)
tokens = APIRouter(prefix="/tokens", tags=["tokens"], route_class=JsonRoute)

Text = Annotated[str, Field(max_length=MAX_NAME)]
Scope = Annotated[str, Field(pattern=r"^(read|write|admin)$")]


async def _accounts(request: Request) -> Accounts:
    found: Accounts = request.app.state.accounts
    return found


AccountsDep = Annotated[Accounts, Depends(_accounts)]


class UserCreate(BaseModel):
    name: Text = either("name", "username", description="the user's name")
    password: Annotated[str, Field(min_length=8, max_length=1024)]
    role: Role = "viewer"
    projects: Annotated[list[Text], Field(max_length=100)] = Field(
        default_factory=lambda: ["default"]
    )

    @model_validator(mode="before")
    @classmethod
    def _one_name(cls, data: Any) -> Any:
        return one_of(data, ("name", "username"))


class UserView(BaseModel):
    name: str
    role: str
    projects: list[str]
    created_at: float

    @classmethod
    def of(cls, user: UserRecord) -> UserView:
        return cls(
            name=user.name, role=user.role, projects=list(user.projects), created_at=user.created_at
        )


class UserList(BaseModel):
    items: list[UserView]


class Login(BaseModel):
    name: Text = either("name", "username", description="the user's name")
    password: Annotated[str, Field(max_length=1024)]

    @model_validator(mode="before")
    @classmethod
    def _one_name(cls, data: Any) -> Any:
        return one_of(data, ("name", "username"))


class Refresh(BaseModel):
    refresh_token: Annotated[str, Field(max_length=1024)]


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"
    #: seconds the access token is good for
    expires_in: float


class TokenCreate(BaseModel):
    name: Text = ""
    #: narrow the token below its user's role; empty: everything the role may do
    scopes: Annotated[list[Scope], Field(max_length=3)] = Field(default_factory=list)
    expires_in: Annotated[float, Field(gt=0, le=10 * 365 * 86400)] | None = either(
        "expires_in",
        "expires_in_s",
        default=None,
        description="seconds until it expires; absent: never",
    )
    #: admins only: make it for another user
    user: Text | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_name(cls, data: Any) -> Any:
        return one_of(data, ("expires_in", "expires_in_s"))


class TokenView(BaseModel):
    id: str
    name: str
    user: str
    role: str
    kind: str
    scopes: list[str]
    projects: list[str]
    created_at: float
    expires_at: float | None

    @classmethod
    def of(cls, token: TokenRecord) -> TokenView:
        return cls(
            id=token.id,
            name=token.name,
            user=token.user,
            role=token.role,
            kind=token.kind,
            scopes=list(token.scopes),
            projects=list(token.projects),
            created_at=token.created_at,
            expires_at=token.expires_at,
        )


class TokenCreated(TokenView):
    #: the secret: shown this once, only its hash is kept
    token: str


class TokenList(BaseModel):
    items: list[TokenView]


def _pair(access: Issued, refresh: Issued) -> TokenPair:
    lifetime = (access.record.expires_at or 0.0) - access.record.created_at
    return TokenPair(access_token=access.secret, refresh_token=refresh.secret, expires_in=lifetime)


@users.post("", status_code=201, response_model=UserView)
async def create_user(body: UserCreate, accounts: AccountsDep) -> UserView:
    return UserView.of(
        await accounts.create_user(body.name, body.password, body.role, body.projects)
    )


@users.get("", response_model=UserList)
async def list_users(accounts: AccountsDep) -> UserList:
    return UserList(items=[UserView.of(u) for u in await accounts.store.list_users()])


@users.delete("/{name}", status_code=204)
async def delete_user(name: str, accounts: AccountsDep, request: Request) -> Response:
    """The user, their tokens, and their ownership of workers and join tokens (a new
    user of the same name inherits nothing)."""
    await accounts.delete_user(name)
    manager: Manager = request.app.state.manager
    await manager.disown(name)
    auth: BrokerAuth | None = getattr(request.app.state, "broker_auth", None)
    if auth is not None:
        auth.disown(name)
    return Response(status_code=204)


@auth.post(
    "/login",
    response_model=TokenPair,
    responses=problems.TOO_MANY,
)
async def login(body: Login, request: Request, accounts: AccountsDep) -> TokenPair:
    """A short-lived access token and a refresh token for a user name and password."""
    client = request.client.host if request.client else "unknown"
    # the audit record names who tried (its status tells whether it was them)
    note(request.scope, actor=body.name)
    pair = await accounts.login(body.name, body.password, client)
    note(request.scope, token_id=pair[0].record.id)
    return _pair(*pair)


@auth.post("/refresh", response_model=TokenPair)
async def refresh(body: Refresh, request: Request, accounts: AccountsDep) -> TokenPair:
    """A new pair for a refresh token (used up by this call)."""
    pair = await accounts.refresh(body.refresh_token)
    note(request.scope, actor=pair[0].record.user, token_id=pair[0].record.id)
    return _pair(*pair)


@tokens.post("", status_code=201, response_model=TokenCreated)
async def create_token(body: TokenCreate, caller: CallerDep, accounts: AccountsDep) -> TokenCreated:
    issued = await accounts.create_token(
        caller, name=body.name, scopes=body.scopes, expires_in=body.expires_in, user=body.user
    )
    view = TokenView.of(issued.record)
    return TokenCreated(**view.model_dump(), token=issued.secret)


@tokens.get("", response_model=TokenList)
async def list_tokens(
    caller: CallerDep, accounts: AccountsDep, user: Text | None = None
) -> TokenList:
    """The caller's tokens; an admin's call lists everyone's (or ``user``'s)."""
    return TokenList(items=[TokenView.of(t) for t in await accounts.list_tokens(caller, user)])


@tokens.delete("/{token_id}", status_code=204)
async def revoke_token(token_id: str, caller: CallerDep, accounts: AccountsDep) -> Response:
    await accounts.revoke(caller, token_id)
    return Response(status_code=204)
