"""/api/v1/clusters"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from edgeplane.api.deps import CallerDep, ManagerDep
from edgeplane.api.params import Limit, Offset
from edgeplane.api.routing import JsonRoute
from edgeplane.api.workers import delete_member
from edgeplane.errors import Conflict
from edgeplane.model import Cluster, Page
from edgeplane.root import get_cluster, list_clusters

router = APIRouter(prefix="/clusters", tags=["clusters"], route_class=JsonRoute)


@router.get("", response_model=Page[Cluster])
async def clusters(
    manager: ManagerDep,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[Cluster]:
    found = list_clusters(manager)
    return Page[Cluster](items=found[offset : offset + limit], total=len(found))


@router.get("/{cluster_id}", response_model=Cluster)
async def cluster(cluster_id: str, manager: ManagerDep) -> Cluster:
    return get_cluster(manager, cluster_id)


@router.delete("/{cluster_id}", status_code=204)
async def delete_cluster(
    cluster_id: str, manager: ManagerDep, request: Request, caller: CallerDep
) -> Response:
    """At a root: revoke the cluster's broker identity, which disconnects it at once, and
    forget it; its tasks are placed again (docs/broker-security.md)."""
    if not manager.root:
        raise Conflict("only a root has clusters to delete; this manager is its own cluster")
    await delete_member(manager, request, cluster_id, caller.user)
    return Response(status_code=204)
