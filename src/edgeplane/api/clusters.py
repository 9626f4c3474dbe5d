"""/api/v1/clusters"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from edgeplane.api.deps import CallerDep, ManagerDep
from edgeplane.api.params import Limit, Offset
from edgeplane.api.routing import JsonRoute
from edgeplane.api.usage import Points, Since, Until, UsageSeries, series
from edgeplane.api.workers import delete_member
from edgeplane.errors import Conflict, NotFound
from edgeplane.manager.series import aggregate
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


@router.get("/{cluster_id}/metrics", response_model=UsageSeries)
async def cluster_metrics(
    cluster_id: str,
    manager: ManagerDep,
    since: Since = None,
    until: Until = None,
    points: Points = 200,
) -> UsageSeries:
    """The cluster's usage: at a root, the aggregate its cluster sends; at a cluster's
    manager, its workers' series summed per time bucket (cpu_percent, load1 and
    temperature_c averaged; ``members``: how many workers had samples in the bucket)."""
    get_cluster(manager, cluster_id)  # its 404
    series_ = manager.series
    if manager.root:
        return series("cluster", cluster_id, series_.member(cluster_id), since, until, points)
    bounded = [
        series("worker", w, series_.member(w), since, until, points).samples
        for w in series_.members()
    ]
    return UsageSeries(id=cluster_id, kind="cluster", samples=aggregate(bounded, points))


@router.get("/{cluster_id}/workers/{worker_id}/metrics", response_model=UsageSeries)
async def cluster_worker_metrics(
    cluster_id: str,
    worker_id: str,
    manager: ManagerDep,
    since: Since = None,
    until: Until = None,
    points: Points = 200,
) -> UsageSeries:
    """At a root: one worker's node usage, as its cluster forwards it."""
    get_cluster(manager, cluster_id)
    if not manager.root:
        raise NotFound("a cluster's own workers are under /workers", field="cluster_id")
    samples = manager.series.worker_of(cluster_id, worker_id)
    if not samples and worker_id not in manager.series.workers_of(cluster_id):
        raise NotFound(f"no samples of worker {worker_id} in cluster {cluster_id}", field="id")
    return series("worker", worker_id, samples, since, until, points)


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
