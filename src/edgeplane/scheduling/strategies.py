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

A task with a spread group goes, among the workers the strategy could give it to right
now, to those running the fewest live tasks of its group (counting the ones this plan
placed); the strategy's order, then the artifact preference, pick among those. So N
tasks of one group over W workers with room land at most one apart per worker, whatever
the strategy (``pack`` too). With required anti-affinity (``distinct``) a worker that
runs one of the group never gets another (over ``cluster``: no second one in this
cluster at all); the task waits, with the rule as its reason. Counts only grow within a
plan, so a refusal too is answered from a cache. Tasks without a group take the plain
path, which this costs one attribute test per task.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter, lt
from types import MappingProxyType

from edgeplane.errors import Invalid
from edgeplane.scheduling.capacity import Capacity
from edgeplane.scheduling.eligibility import (
    Requirement,
    candidates,
    matches,
    mismatch_reason,
    pinned_reason,
)
from edgeplane.scheduling.snapshot import Plan, TaskDemand, WorkerView, spread_group

STRATEGIES: tuple[str, ...] = ("round-robin", "priority", "resource-fit")

_NO_SPREAD: Mapping[str, Mapping[str, int]] = MappingProxyType({})
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
    #: spread group → its workers by their live tasks of it (``_Placer.levels``)
    levels: dict[str, dict[int, list[int]]] = field(default_factory=dict)


class _Placer:
    def __init__(
        self, workers: Sequence[WorkerView], spread: Mapping[str, Mapping[str, int]]
    ) -> None:
        self.ring = _ring(workers)
        self.orders = list(map(_order, self.ring))
        self.capacity = Capacity(self.ring)
        self.groups: dict[Requirement, _Group] = {}
        self._by_id: dict[str, int] | None = None
        self._holding: dict[str, list[int]] = {}
        #: worker id → its live tasks per spread group (``make_plan``'s ``spread``)
        self.live = spread
        #: spread group → live tasks of it per ring position, this plan's included
        self._spread: dict[str, list[int]] = {}
        #: spread group → its live tasks in all
        self.totals: dict[str, int] = {}
        #: round-robin: the ring position the cursor points at (``make_plan`` keeps it)
        self.start = 0
        #: (requirement, cpu, memory, group, over, distinct) → why anti-affinity leaves no worker
        self.refused: dict[tuple[Requirement, float, int, str, str, bool], str] = {}

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
        return self.choose(fitting, pack=pack)

    def choose(self, fitting: Sequence[int], *, pack: bool) -> int:
        """resource-fit's pick among ``fitting`` (non-empty): see :meth:`best_fit`."""
        slots, free_cpu, memory = self.capacity.slots, self.capacity.cpu, self.capacity.memory
        if pack:
            least = min(map(memory.__getitem__, fitting))
            tied = [pos for pos in fitting if memory[pos] == least]
            return min(tied, key=lambda pos: (free_cpu[pos], slots[pos], pos))
        most = max(map(memory.__getitem__, fitting))
        tied = [pos for pos in fitting if memory[pos] == most]
        return min(tied, key=lambda pos: (-free_cpu[pos], -slots[pos], pos))

    def counts(self, key: str) -> list[int]:
        """Live tasks of spread group ``key`` per ring position (built once per group)."""
        found = self._spread.get(key)
        if found is None:
            live = self.live
            found = self._spread[key] = [
                live[w.id].get(key, 0) if w.id in live else 0 for w in self.ring
            ]
            self.totals[key] = sum(found)
        return found

    def levels(self, group: _Group, key: str) -> dict[int, list[int]]:
        """The group's workers by their live tasks of spread group ``key``: count → ring
        positions, ascending. Built once; an entry whose count grew since (a task of
        another requirement went there) is moved up when met, and one without a free
        slot dropped: within a plan neither comes back."""
        found = group.levels.get(key)
        if found is None:
            counts = self.counts(key)
            found = group.levels[key] = {}
            for pos in group.live:
                found.setdefault(counts[pos], []).append(pos)
        return found

    def _first(
        self, members: list[int], level: int, counts: list[int], levels: dict[int, list[int]]
    ) -> int | None:
        """round-robin: the first of ``members`` with a free slot at or after the cursor
        position ``self.start``, wrapping, tidying the entries it steps over."""
        slots = self.capacity.slots
        at = bisect_left(members, self.start)
        while members:
            if at >= len(members):
                at = 0
            pos = members[at]
            now = counts[pos]
            if now != level:
                del members[at]
                insort(levels.setdefault(now, []), pos)
            elif slots[pos] <= 0:
                del members[at]
            else:
                return pos
        return None

    def _fitting(
        self,
        members: list[int],
        level: int,
        counts: list[int],
        levels: dict[int, list[int]],
        cpu: float,
        memory_mb: int,
    ) -> list[int]:
        """resource-fit: ``members`` with room for the request, after tidying them all."""
        slots = self.capacity.slots
        kept = []
        for pos in members:
            now = counts[pos]
            if now != level:
                insort(levels.setdefault(now, []), pos)
            elif slots[pos] > 0:
                kept.append(pos)
        members[:] = kept
        return self.capacity.fitting(kept, cpu, memory_mb)

    def spread(
        self,
        task: TaskDemand,
        key: str,
        group: _Group,
        cpu: float,
        memory_mb: int,
        *,
        resources: bool,
        pack: bool,
    ) -> tuple[int | None, str | None]:
        """Where a task of a spread group goes: ``(position, None)``; ``(None, reason)``
        when anti-affinity leaves nobody; ``(None, None)`` when no worker has room.

        The levels are walked from the fewest up; the first with room decides, so a task
        costs the workers it steps over, not the whole ring (10,000 replicas over 10,000
        workers scanned 10^8 entries)."""
        counts = self.counts(key)
        levels = self.levels(group, key)
        room: list[int] = []
        level = min(levels, default=None)
        while level is not None:
            members = levels[level]
            if resources:
                room = self._fitting(members, level, counts, levels, cpu, memory_mb)
            else:
                first = self._first(members, level, counts, levels)
                room = [] if first is None else [first]
            if room:
                break
            if not members:
                del levels[level]
            level = min((k for k in levels if k > level), default=None)
        if level is None:
            return None, None
        if task.distinct:
            if task.spread_over == "cluster" and self.totals[key]:
                return None, _refusal(key, "cluster")
            if level:
                return None, _refusal(key, "worker")
        if task.artifact is not None:
            slots = self.capacity.slots
            held = [
                pos
                for pos in self.holders(group, task.artifact)
                if counts[pos] == level and slots[pos] > 0
            ]
            if resources:
                held = self.capacity.fitting(held, cpu, memory_mb)
            if held:
                room = held
        if resources:
            pos = self.choose(room, pack=pack)
        else:
            at = bisect_left(room, self.start)
            pos = room[at] if at < len(room) else room[0]
        members = levels[level]
        at = bisect_left(members, pos)
        if at < len(members) and members[at] == pos:
            del members[at]
        insort(levels.setdefault(level + 1, []), pos)
        counts[pos] += 1
        self.totals[key] += 1
        return pos, None

    def waiting_reason(self, req: Requirement, group: _Group, cpu: float, memory_mb: int) -> str:
        if not group.eligible:
            if req.worker_id is None:
                return mismatch_reason(self.ring, req)
            pos = self.by_id.get(req.worker_id)
            return pinned_reason(None if pos is None else self.ring[pos], req)
        return self.capacity.shortage(group.eligible, cpu, memory_mb, pinned=req.worker_id)


def _refusal(key: str, over: str) -> str:
    if over == "cluster":
        return (
            f"anti-affinity required (spread over clusters): this cluster already runs a "
            f"task of spread group '{spread_group(key)}'"
        )
    return (
        f"anti-affinity required (spread over workers): every eligible worker with room "
        f"already runs a task of spread group '{spread_group(key)}'"
    )


def make_plan(
    strategy: str,
    workers: Sequence[WorkerView],
    tasks: Sequence[TaskDemand],
    *,
    cursor: int = 0,
    pack: bool = False,
    spread: Mapping[str, Mapping[str, int]] = _NO_SPREAD,
) -> Plan:
    """Place ``tasks`` on ``workers`` with ``strategy``; never touches anything else.

    ``cursor`` is the ring position (a worker ``order``) where round-robin resumes; pass
    the returned ``Plan.cursor`` to the next call. ``pack`` switches resource-fit from
    spreading load to bin-packing. ``spread`` maps a worker id to its live tasks per
    spread group (workers running none may be left out); only tasks of a group read it.
    """
    if strategy not in STRATEGIES:
        raise Invalid(
            f"unknown scheduler {strategy!r}; choose one of {', '.join(STRATEGIES)}",
            field="scheduler",
        )
    if len({t.id for t in tasks}) != len(tasks):
        raise Invalid("task ids must be unique", field="tasks")
    resources = strategy == "resource-fit"
    placer = _Placer(workers, spread)
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
        key = task.spread
        if key is not None:
            refusal = (req, cpu, memory_mb, key, task.spread_over, task.distinct)
            reason = placer.refused.get(refusal)
            if reason is None:
                placer.start = bisect_left(placer.orders, cursor)
                pos, reason = placer.spread(
                    task, key, group, cpu, memory_mb, resources=resources, pack=pack
                )
                if reason is not None:
                    placer.refused[refusal] = reason
            if reason is not None:
                waiting[task.id] = reason
                continue
        elif resources:
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
