"""The cluster schedulers: pure functions from a snapshot to a :class:`Plan`.

A task naming an artifact prefers a worker holding it, but only among the workers the
strategy could give it to right now (eligible, with a free slot, and with room for its
cpu and memory under resource-fit): then the strategy's own order picks among those
holders. When no such worker has room, the strategy decides as if nobody held it, so the
preference never makes a task wait nor overrides a constraint.

All three walk the tasks in a fixed order and place each one against capacity that
shrinks as the plan grows. Because capacity only ever shrinks within a plan, a task
that could not be placed stays unplaceable for the rest of the call; that lets equal
requests that failed once be answered from a cache instead of re-scanning the workers.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import attrgetter, lt

from edgeplane.errors import Invalid
from edgeplane.scheduling.capacity import Capacity
from edgeplane.scheduling.eligibility import (
    Requirement,
    candidates,
    matches,
    mismatch_reason,
    pinned_reason,
)
from edgeplane.scheduling.snapshot import Plan, TaskDemand, WorkerView

STRATEGIES: tuple[str, ...] = ("round-robin", "priority", "resource-fit")

_ring_key = attrgetter("order", "id")
_order = attrgetter("order")
_fifo_key = attrgetter("seq")


def _ring(workers: Sequence[WorkerView]) -> list[WorkerView]:
    """Workers by ``order`` (then id); callers usually pass them sorted already."""
    orders = list(map(_order, workers))
    if all(map(lt, orders, orders[1:])):
        return list(workers)
    return sorted(workers, key=_ring_key)


def _priority_key(task: TaskDemand) -> tuple[int, float]:
    return (-task.priority, task.seq)


@dataclass
class _Group:
    """Ring positions of the workers matching one requirement, ascending.

    ``live`` loses the workers round-robin finds without a free slot, so a long batch
    does not step over the same full workers again and again.
    """

    eligible: list[int]
    live: list[int]
    failed: dict[tuple[float, int], str] = field(default_factory=dict)
    #: artifact → ring positions of the eligible workers holding it, ascending
    holders: dict[str, list[int]] = field(default_factory=dict)


class _Placer:
    def __init__(self, workers: Sequence[WorkerView]) -> None:
        self.ring = _ring(workers)
        self.orders = list(map(_order, self.ring))
        self.capacity = Capacity(self.ring)
        self.groups: dict[Requirement, _Group] = {}
        self._by_id: dict[str, int] | None = None
        self._holding: dict[str, list[int]] = {}

    @property
    def by_id(self) -> dict[str, int]:
        """Ring position by worker id; built only when some task is pinned."""
        if self._by_id is None:
            self._by_id = {w.id: pos for pos, w in enumerate(self.ring)}
        return self._by_id

    def group(self, req: Requirement) -> _Group:
        found = self.groups.get(req)
        if found is None:
            eligible = self._eligible(req)
            found = self.groups[req] = _Group(eligible, list(eligible))
        return found

    def _eligible(self, req: Requirement) -> list[int]:
        if req.worker_id is None:
            return candidates(self.ring, req)
        pos = self.by_id.get(req.worker_id)
        return [pos] if pos is not None and matches(self.ring[pos], req) else []

    def next_in_ring(self, group: _Group, cursor: int) -> int | None:
        """The first worker with a free slot at or after ``cursor``, wrapping around."""
        live, slots = group.live, self.capacity.slots
        at = bisect_left(live, bisect_left(self.orders, cursor))
        while live:
            if at >= len(live):
                at = 0
            pos = live[at]
            if slots[pos] > 0:
                return pos
            del live[at]
        return None

    def holders(self, group: _Group, artifact: str) -> list[int]:
        """The group's workers holding ``artifact``: one scan of the ring per artifact and
        one filter per group, so a batch of tasks needing one module costs no more per
        task than the holders it looks at."""
        found = group.holders.get(artifact)
        if found is None:
            anywhere = self._holding.get(artifact)
            if anywhere is None:
                ring = self.ring
                anywhere = [p for p in range(len(ring)) if artifact in ring[p].artifacts]
                self._holding[artifact] = anywhere
            eligible = set(group.eligible)
            found = group.holders[artifact] = [p for p in anywhere if p in eligible]
        return found

    def next_holder(self, group: _Group, cursor: int, artifact: str) -> int | None:
        """The first worker at or after ``cursor`` (wrapping) that holds ``artifact`` and
        has a free slot, among the group's; None when there is none."""
        slots = self.capacity.slots
        held = [pos for pos in self.holders(group, artifact) if slots[pos] > 0]
        if not held:
            return None
        start = bisect_left(self.orders, cursor)
        after = [pos for pos in held if pos >= start]
        return (after or held)[0]

    def best_fit(
        self,
        group: _Group,
        cpu: float,
        memory_mb: int,
        *,
        pack: bool,
        artifact: str | None = None,
    ) -> int | None:
        """Spread: the most free memory, then cpu, then slots; pack: the least of each.
        Among workers holding ``artifact`` first, when one of them fits.

        Memory is compared first on its own (at C speed) so the tuple key only runs on
        the few workers that tie on it.
        """
        fitting = self.capacity.fitting(group.live, cpu, memory_mb)
        if not fitting:
            return None
        if artifact is not None:
            holding = self.holders(group, artifact)
            held = self.capacity.fitting(holding, cpu, memory_mb) if holding else []
            if held:
                fitting = held
        slots, free_cpu, memory = self.capacity.slots, self.capacity.cpu, self.capacity.memory
        if pack:
            least = min(map(memory.__getitem__, fitting))
            tied = [pos for pos in fitting if memory[pos] == least]
            return min(tied, key=lambda pos: (free_cpu[pos], slots[pos], pos))
        most = max(map(memory.__getitem__, fitting))
        tied = [pos for pos in fitting if memory[pos] == most]
        return min(tied, key=lambda pos: (-free_cpu[pos], -slots[pos], pos))

    def waiting_reason(self, req: Requirement, group: _Group, cpu: float, memory_mb: int) -> str:
        if not group.eligible:
            if req.worker_id is None:
                return mismatch_reason(self.ring, req)
            pos = self.by_id.get(req.worker_id)
            return pinned_reason(None if pos is None else self.ring[pos], req)
        return self.capacity.shortage(group.eligible, cpu, memory_mb, pinned=req.worker_id)


def make_plan(
    strategy: str,
    workers: Sequence[WorkerView],
    tasks: Sequence[TaskDemand],
    *,
    cursor: int = 0,
    pack: bool = False,
) -> Plan:
    """Place ``tasks`` on ``workers`` with ``strategy``; never touches anything else.

    ``cursor`` is the ring position (a worker ``order``) where round-robin resumes; pass
    the returned ``Plan.cursor`` to the next call. ``pack`` switches resource-fit from
    spreading load to bin-packing.
    """
    if strategy not in STRATEGIES:
        raise Invalid(
            f"unknown scheduler {strategy!r}; choose one of {', '.join(STRATEGIES)}",
            field="scheduler",
        )
    if len({t.id for t in tasks}) != len(tasks):
        raise Invalid("task ids must be unique", field="tasks")
    resources = strategy == "resource-fit"
    placer = _Placer(workers)
    queue = sorted(tasks, key=_fifo_key if strategy == "round-robin" else _priority_key)
    ring, capacity = placer.ring, placer.capacity
    assignments: list[tuple[str, str]] = []
    waiting: dict[str, str] = {}
    for task in queue:
        req = Requirement.of(task)
        group = placer.group(req)
        cpu, memory_mb = (task.cpu, task.memory_mb) if resources else (0.0, 0)
        demand = (cpu, memory_mb)
        reason = group.failed.get(demand)
        if reason is not None:
            waiting[task.id] = reason
            continue
        artifact = task.artifact
        if resources:
            pos = placer.best_fit(group, cpu, memory_mb, pack=pack, artifact=artifact)
        else:
            pos = None if artifact is None else placer.next_holder(group, cursor, artifact)
            if pos is None:
                pos = placer.next_in_ring(group, cursor)
        if pos is None:
            reason = group.failed[demand] = placer.waiting_reason(req, group, cpu, memory_mb)
            waiting[task.id] = reason
            continue
        capacity.take(pos, cpu, memory_mb)
        worker = ring[pos]
        assignments.append((task.id, worker.id))
        if not resources:
            cursor = worker.order + 1
    return Plan(assignments=tuple(assignments), waiting=waiting, cursor=cursor)
