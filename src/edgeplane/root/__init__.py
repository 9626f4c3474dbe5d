"""The root of the hierarchy: clusters, applications, placement over aggregates."""

from edgeplane.root.applications import Applications
from edgeplane.root.clusters import get_cluster, list_clusters

__all__ = ["Applications", "get_cluster", "list_clusters"]
