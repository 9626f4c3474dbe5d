"""/api/v1/clusters"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from edgeplane.api.deps import ManagerDep
from edgeplane.model import Cluster, Page
from edgeplane.root import get_cluster, list_clusters

router = APIRouter(prefix="/clusters", tags=["clusters"])


@router.get("", response_model=Page[Cluster])
async def clusters(
    manager: ManagerDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Page[Cluster]:
    found = list_clusters(manager)
    return Page[Cluster](items=found[offset : offset + limit], total=len(found))


@router.get("/{cluster_id}", response_model=Cluster)
async def cluster(cluster_id: str, manager: ManagerDep) -> Cluster:
    return get_cluster(manager, cluster_id)
