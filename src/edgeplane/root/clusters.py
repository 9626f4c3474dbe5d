"""Cluster documents: the root's view of its clusters, or a lone cluster's view of itself."""

from __future__ import annotations

from edgeplane.errors import NotFound
from edgeplane.manager import Manager
from edgeplane.manager.registry import WorkerEntry
from edgeplane.model import Cluster, ClusterInfo
from edgeplane.scheduling.aggregate import aggregate


def _doc(entry: WorkerEntry) -> Cluster:
    info = entry.info or ClusterInfo()
    worker = entry.worker
    return Cluster(
        id=worker.id,
        name=info.name or worker.capabilities.hostname or worker.id,
        state="online" if entry.online else "offline",
        location=info.location or worker.capabilities.location,
        labels=info.labels or worker.capabilities.labels,
        broker_url=info.broker_url,
        aggregate=entry.aggregate,
        active_tasks=len(entry.tasks),
        registered_at=worker.registered_at,
        last_seen=worker.last_seen,
    )


def _local(manager: Manager) -> Cluster:
    """A manager without a root is a cluster of one: itself, aggregated on the spot."""
    settings = manager.settings
    now = manager.clock.now()
    return Cluster(
        id=settings.cluster_id,
        name=settings.cluster_name or settings.cluster_id,
        labels=dict(settings.labels),
        broker_url=manager.broker_url,
        aggregate=aggregate(manager.registry.schedulable(), ts=now),
        active_tasks=sum(len(e.tasks) for e in manager.registry.entries()),
        last_seen=now,
    )


def list_clusters(manager: Manager) -> list[Cluster]:
    if not manager.root:
        return [_local(manager)]
    return [_doc(entry) for entry in manager.registry.entries()]


def get_cluster(manager: Manager, cluster_id: str) -> Cluster:
    for cluster in list_clusters(manager):
        if cluster.id == cluster_id:
            return cluster
    raise NotFound(f"cluster {cluster_id} not found", field="id")
