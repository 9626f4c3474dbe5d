"""Started tasks waiting for a worker, in dispatch order (priority, then age).

A scheduling pass runs after every batch of events, so it must not touch every pending
task: with 10,000 queued, a pass only looks at the first few hundred. A heap gives that
order; entries of tasks that left the queue are dropped lazily when they surface.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from edgeplane.artifacts import reference
from edgeplane.errors import EdgeplaneError
from edgeplane.model import Task
from edgeplane.model.task import NO_CONSTRAINTS, spread_key
from edgeplane.scheduling import GeoPoint, TaskDemand

_Key = tuple[int, float, str]


@dataclass(frozen=True)
class Candidates:
    due: list[Task]
    #: earliest ``not_before`` among tasks seen that are still backing off
    next_due: float | None


def artifact_of(task: Task) -> str | None:
    """The digest that makes a worker holding it preferred for ``task``: its module's
    sha256, or the manifest digest a container task's ``oci://`` image is pinned to (hex,
    as workers report them: worker/held.py). None for an image named by a tag not pinned
    yet (the registry did not answer at admission) or found in the worker's image dir."""
    if task.artifact is not None:
        return task.artifact
    image = task.image
    if task.runtime != "container" or image is None or not reference.is_oci(image):
        return None
    try:
        digest = reference.parse(image).digest
    except EdgeplaneError:  # admitted before the grammar was checked: no preference
        return None
    return None if digest is None else digest.removeprefix("sha256:")


def needs_bridge(task: Task) -> bool:
    """Whether only a worker with a bridge network can run ``task`` (a container task
    with ``network: bridge``, which admission sets when it publishes ports)."""
    return task.runtime == "container" and task.network == "bridge"


#: labels of a task that sets none, already read-only (``TaskDemand`` copies a dict)
_NO_LABELS: Mapping[str, str] = MappingProxyType({})


def demand_of(task: Task) -> TaskDemand:
    """What the scheduler needs to know of a task."""
    if task.constraints is NO_CONSTRAINTS and task.runtime != "container" and not task.rejected_by:
        # The common task (no constraints, not a container, refused by nobody): every
        # other field is TaskDemand's default. Half the arguments and no labels copied:
        # 4.5 -> 3.0 us per task (/tmp microbenchmark, 1,000 wasm tasks).
        return TaskDemand(
            id=task.id,
            runtime=task.runtime,
            priority=task.priority,
            seq=task.created_at,
            labels=_NO_LABELS,
            worker_id=task.pinned_worker,
            cluster_id=task.pinned_cluster,
            artifact=task.artifact,
        )
    geo = task.constraints.geo
    spread = task.constraints.spread
    return TaskDemand(
        id=task.id,
        runtime=task.runtime,
        priority=task.priority,
        seq=task.created_at,
        labels=task.constraints.labels,
        tee=task.constraints.tee,
        cpu=task.constraints.cpu or 0.0,
        memory_mb=task.constraints.memory_mb or 0,
        worker_id=task.pinned_worker,
        bridge=needs_bridge(task),
        cluster_id=task.pinned_cluster,
        clusters=frozenset(task.constraints.clusters),
        exclude=frozenset(task.rejected_by),
        geo=None if geo is None else GeoPoint(geo.lat, geo.lon, geo.radius_km),
        artifact=artifact_of(task),
        spread=spread_key(task.project, spread),
        spread_over="worker" if spread is None else spread.over,
        distinct=spread is not None and spread.anti_affinity == "required",
    )


class PendingQueue:
    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self._heap: list[_Key] = []
        #: scheduler demands, built once per task while it waits (a pass runs per event)
        self._demands: dict[str, TaskDemand] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._tasks

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks.values())

    def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def put(self, task: Task) -> None:
        """Add a task, or replace its document (its place in line stays the same)."""
        if task.id not in self._tasks:
            heapq.heappush(self._heap, (-task.priority, task.created_at, task.id))
        elif self._tasks[task.id].rejected_by != task.rejected_by:
            self._demands.pop(task.id, None)  # the root's exclusions changed
        self._tasks[task.id] = task

    def pop(self, task_id: str) -> Task | None:
        self._demands.pop(task_id, None)
        return self._tasks.pop(task_id, None)

    def demand(self, task: Task) -> TaskDemand:
        found = self._demands.get(task.id)
        if found is None:
            found = self._demands[task.id] = demand_of(task)
        return found

    def candidates(self, now: float, limit: int) -> Candidates:
        """Up to ``limit`` due tasks in dispatch order; they stay queued until popped."""
        due: list[Task] = []
        seen: list[_Key] = []
        ids: set[str] = set()
        next_due: float | None = None
        while self._heap and len(due) < limit:
            key = heapq.heappop(self._heap)
            task = self._tasks.get(key[2])
            if task is None or key[2] in ids:
                # left the queue earlier, or a stale entry of a task that left and came back
                continue
            ids.add(key[2])
            seen.append(key)
            if task.not_before <= now:
                due.append(task)
            elif next_due is None or task.not_before < next_due:
                next_due = task.not_before
        for key in seen:
            heapq.heappush(self._heap, key)
        return Candidates(due=due, next_due=next_due)
