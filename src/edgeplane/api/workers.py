"""/api/v1/workers

Who may call what is the policy's (``edgeplane.security.roles``): reads every role,
changes an admin, or the owner of the worker in the path (docs/security.md).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from edgeplane.api.deps import CallerDep, ManagerDep
from edgeplane.api.params import Limit, Offset
from edgeplane.api.routing import JsonRoute
from edgeplane.api.usage import Points, Since, Until, UsageSeries, series
from edgeplane.errors import NotFound
from edgeplane.limits import MAX_NAME
from edgeplane.manager import Manager
from edgeplane.model import Page, Worker
from edgeplane.security.accounts import Accounts
from edgeplane.security.broker_auth import BrokerAuth

router = APIRouter(prefix="/workers", tags=["workers"], route_class=JsonRoute)


class OwnerChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: the user who owns the worker from now on; null: nobody
    owner: str | None = Field(max_length=MAX_NAME)


@router.get("", response_model=Page[Worker])
async def list_workers(
    manager: ManagerDep,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[Worker]:
    workers = manager.workers()
    return Page[Worker](items=workers[offset : offset + limit], total=len(workers))


@router.get("/{worker_id}", response_model=Worker)
async def get_worker(worker_id: str, manager: ManagerDep) -> Worker:
    return manager.worker(worker_id)


@router.get("/{worker_id}/metrics", response_model=UsageSeries)
async def worker_metrics(
    worker_id: str,
    manager: ManagerDep,
    since: Since = None,
    until: Until = None,
    points: Points = 200,
) -> UsageSeries:
    """The worker's node usage: cpu, memory, disk, network, load, temperature."""
    manager.worker(worker_id)  # its 404
    return series("worker", worker_id, manager.series.member(worker_id), since, until, points)


@router.post("/{worker_id}/drain", response_model=Worker)
async def drain_worker(worker_id: str, manager: ManagerDep) -> Worker:
    return await manager.drain_worker(worker_id)


@router.post("/{worker_id}/undrain", response_model=Worker)
async def undrain_worker(worker_id: str, manager: ManagerDep) -> Worker:
    """Place tasks on a drained worker again."""
    return await manager.undrain_worker(worker_id)


@router.put("/{worker_id}/owner", response_model=Worker)
async def set_owner(
    worker_id: str, body: OwnerChange, manager: ManagerDep, request: Request
) -> Worker:
    """Give the worker to a user (an admin's call, even for its owner): they may then
    drain, undrain and delete it, and manage what runs on it, whatever their role."""
    if body.owner is not None:
        accounts: Accounts = request.app.state.accounts
        await accounts.existing_user(body.owner, "owner")
    return await manager.set_owner(worker_id, body.owner)


@router.delete("/{worker_id}", status_code=204)
async def delete_worker(
    worker_id: str, manager: ManagerDep, request: Request, caller: CallerDep
) -> Response:
    """Forget the worker; on a broker edgeplane started, also revoke its identity first,
    which disconnects it at once (docs/broker-security.md)."""
    await delete_member(manager, request, worker_id, caller.user)
    return Response(status_code=204)


async def delete_member(manager: Manager, request: Request, member_id: str, actor: str) -> None:
    """Revoke the member's broker identity (a worker's, or a cluster's at a root) and
    forget the member: the broker disconnects it at once, its tasks are placed again."""
    auth: BrokerAuth | None = getattr(request.app.state, "broker_auth", None)
    revoked = auth is not None and auth.revoke_member(member_id, actor=actor)
    try:
        await manager.delete_worker(member_id)
    except NotFound:
        if not revoked:  # an identity that never said hello is still deleted
            raise
