"""What differs between the two levels of the hierarchy, injected into the manager.

A cluster's manager places tasks on its workers; the root places them on clusters, whose
capacity it knows from their aggregates and which may reject a task. Everything else
(journal, lifecycle, liveness, dispatch) is the same code at both levels.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from edgeplane.config import Settings
from edgeplane.manager import lifecycle
from edgeplane.manager.registry import Registry
from edgeplane.model import Task, Worker
from edgeplane.model.worker import Capabilities
from edgeplane.protocol import Topics
from edgeplane.scheduling import Plan, TaskDemand, WorkerView, make_plan
from edgeplane.scheduling.placement import place_on_clusters

#: How many pending tasks one scheduling pass looks at, per free slot.
_CANDIDATES_PER_SLOT = 4


@dataclass(frozen=True)
class WorkerLevel:
    """A cluster's manager: members are workers."""

    settings: Settings
    member = "worker"
    #: message leaves members publish
    leaves: tuple[str, ...] = ("hello", "alive", "events", "metrics")

    @cached_property
    def topics(self) -> Topics:
        return Topics(self.settings.domain, self.settings.cluster_id)

    @property
    def client_name(self) -> str:
        """What its link's client id starts with (``unique_client_id``)."""
        return f"edgeplane-manager-{self.settings.domain}-{self.settings.cluster_id}"

    @property
    def cluster_id(self) -> str | None:
        """The cluster new tasks belong to."""
        return self.settings.cluster_id

    @staticmethod
    def member_of(task: Task) -> str | None:
        return task.worker_id

    def assign(self, task: Task, member_id: str, now: float) -> Task:
        return lifecycle.assign(task, member_id, self.settings.cluster_id, now)

    def new_member(self, member_id: str, capabilities: Capabilities, now: float) -> Worker:
        return Worker(
            id=member_id,
            cluster_id=self.settings.cluster_id,
            capabilities=capabilities,
            registered_at=now,
        )

    @staticmethod
    def views(registry: Registry) -> list[WorkerView]:
        return registry.schedulable()

    @staticmethod
    def window(views: list[WorkerView]) -> int:
        """How many pending tasks one pass looks at."""
        free = sum(v.free_slots for v in views)
        return max(16, free * _CANDIDATES_PER_SLOT)

    def plan(
        self, demands: list[TaskDemand], views: list[WorkerView], registry: Registry, cursor: int
    ) -> Plan:
        spread = registry.spread() if any(d.spread is not None for d in demands) else {}
        return make_plan(
            self.settings.scheduler,
            views,
            demands,
            cursor=cursor,
            pack=self.settings.pack,
            spread=spread,
        )


@dataclass(frozen=True)
class ClusterLevel:
    """The root: members are clusters, placed on by their aggregates."""

    settings: Settings
    member = "cluster"
    leaves: tuple[str, ...] = ("hello", "alive", "events", "aggregate", "metrics")

    @cached_property
    def topics(self) -> Topics:
        return Topics.for_root(self.settings.domain)

    @property
    def client_name(self) -> str:
        return f"edgeplane-root-{self.settings.domain}"

    @property
    def cluster_id(self) -> str | None:
        return None  # placement decides

    @staticmethod
    def member_of(task: Task) -> str | None:
        return task.cluster_id

    @staticmethod
    def assign(task: Task, member_id: str, now: float) -> Task:
        return lifecycle.place(task, member_id, now)

    @staticmethod
    def new_member(member_id: str, capabilities: Capabilities, now: float) -> Worker:
        return Worker(
            id=member_id, cluster_id=member_id, capabilities=capabilities, registered_at=now
        )

    @staticmethod
    def views(registry: Registry) -> list[WorkerView]:
        return []  # clusters are seen through their aggregates (see plan)

    @staticmethod
    def window(views: list[WorkerView]) -> int:
        return 1000  # clusters queue what they accept: offer them a large batch

    def plan(
        self, demands: list[TaskDemand], views: list[WorkerView], registry: Registry, cursor: int
    ) -> Plan:
        # A task rejected by `placement_attempts` clusters in a row waits for an aggregate
        # to change (which clears that cluster from its rejections) instead of cycling.
        limit = self.settings.placement_attempts
        tired = {
            d.id: d
            for d in demands
            if len(d.exclude) >= limit or (d.cluster_id is not None and d.cluster_id in d.exclude)
        }
        plan = place_on_clusters(
            registry.cluster_views(),
            [d for d in demands if d.id not in tired],
            pack=self.settings.pack,
        )
        waiting = dict(plan.waiting)
        for demand in tired.values():
            rejected = ", ".join(sorted(demand.exclude))
            waiting[demand.id] = f"rejected by {rejected}; waiting for their capacity to change"
        return Plan(assignments=plan.assignments, waiting=waiting, cursor=0)


Level = WorkerLevel | ClusterLevel
