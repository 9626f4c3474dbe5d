"""/api/v1/workers"""

from __future__ import annotations

from fastapi import APIRouter, Response

from edgeplane.api.deps import ManagerDep
from edgeplane.api.params import Limit, Offset
from edgeplane.api.routing import JsonRoute
from edgeplane.model import Page, Worker

router = APIRouter(prefix="/workers", tags=["workers"], route_class=JsonRoute)


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


@router.post("/{worker_id}/drain", response_model=Worker)
async def drain_worker(worker_id: str, manager: ManagerDep) -> Worker:
    return await manager.drain_worker(worker_id)


@router.delete("/{worker_id}", status_code=204)
async def delete_worker(worker_id: str, manager: ManagerDep) -> Response:
    await manager.delete_worker(worker_id)
    return Response(status_code=204)
