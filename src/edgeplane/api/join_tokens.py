"""/api/v1/join-tokens: tokens a worker joins its manager's broker with, or a cluster's
manager its root's (docs/broker-security.md).

Admin-only, reads included (``edgeplane.security.roles``, docs/security.md).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgeplane.api.aliases import either, one_of
from edgeplane.api.deps import CallerDep
from edgeplane.api.routing import JsonRoute
from edgeplane.errors import Conflict, Invalid
from edgeplane.limits import MAX_NAME
from edgeplane.model.bounds import Label
from edgeplane.protocol.joining import WORKER_ID_PATTERN
from edgeplane.security.accounts import Accounts
from edgeplane.security.broker_auth import BrokerAuth, JoinToken

router = APIRouter(prefix="/join-tokens", tags=["join-tokens"], route_class=JsonRoute)

#: a year: a join token is meant to be used soon after it is made
MAX_TTL_S = 365 * 24 * 3600.0


class JoinTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ttl_s: float = either(
        "ttl_s",
        "expires_in_s",
        default=3600.0,
        gt=0,
        le=MAX_TTL_S,
        allow_inf_nan=False,
        description="seconds the token may be used for",
    )
    #: labels the joining worker gets
    labels: dict[Label, Label] = Field(default_factory=dict, max_length=64)
    #: the id the joining worker gets (default: the id it asks for); a manager's only
    worker_id: str | None = Field(default=None, pattern=WORKER_ID_PATTERN)
    #: the only cluster that may join with it (default: any); a root's only
    cluster_id: str | None = Field(default=None, pattern=WORKER_ID_PATTERN)
    #: the user who owns the joining worker (docs/security.md): an existing user
    owner: str | None = Field(default=None, max_length=MAX_NAME)

    @model_validator(mode="before")
    @classmethod
    def _one_name(cls, data: Any) -> Any:
        return one_of(data, ("ttl_s", "expires_in_s"))


class NewJoinToken(JoinToken):
    #: the secret, shown this once: `edgeplane worker --join TOKEN` (at a root:
    #: `edgeplane manager --root URL --join TOKEN`)
    token: str


async def broker_auth(request: Request) -> BrokerAuth:
    auth: BrokerAuth | None = getattr(request.app.state, "broker_auth", None)
    if auth is None:
        raise Conflict(
            "join tokens need a broker edgeplane started itself; this manager was given "
            "--broker (secure that broker yourself)"
        )
    return auth


AuthDep = Annotated[BrokerAuth, Depends(broker_auth)]


@router.post("", response_model=NewJoinToken, status_code=201)
async def create_join_token(
    body: JoinTokenRequest, auth: AuthDep, request: Request, caller: CallerDep
) -> NewJoinToken:
    wrong = "worker_id" if auth.topics.root else "cluster_id"
    if getattr(body, wrong) is not None:
        raise Invalid(
            f"this {'root' if auth.topics.root else 'manager'}'s members are "
            f"{auth.member}s: give {auth.member}_id",
            field=wrong,
        )
    if body.owner is not None:
        accounts: Accounts = request.app.state.accounts
        await accounts.existing_user(body.owner, "owner")
    member_id = body.cluster_id if auth.topics.root else body.worker_id
    token, secret = auth.create_token(
        ttl_s=body.ttl_s,
        labels=body.labels,
        member_id=member_id,
        owner=body.owner,
        actor=caller.user,
    )
    return NewJoinToken(**token.model_dump(), token=secret)


@router.get("", response_model=list[JoinToken])
async def list_join_tokens(auth: AuthDep) -> list[JoinToken]:
    return auth.tokens()


@router.delete("/{token_id}", status_code=204)
async def delete_join_token(token_id: str, auth: AuthDep, caller: CallerDep) -> Response:
    """Revoke the token and cut off every member that joined with it."""
    auth.delete_token(token_id, actor=caller.user)
    return Response(status_code=204)
