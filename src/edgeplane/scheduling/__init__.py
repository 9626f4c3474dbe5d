"""Pure cluster schedulers: ``make_plan(strategy, workers, tasks) -> Plan``, no I/O, no clock."""

from edgeplane.scheduling.snapshot import (
    TEE_RULES,
    ClusterView,
    GeoPoint,
    GroupView,
    Plan,
    TaskDemand,
    WorkerView,
)
from edgeplane.scheduling.strategies import STRATEGIES, make_plan

__all__ = [
    "STRATEGIES",
    "TEE_RULES",
    "ClusterView",
    "GeoPoint",
    "GroupView",
    "Plan",
    "TaskDemand",
    "WorkerView",
    "make_plan",
]
