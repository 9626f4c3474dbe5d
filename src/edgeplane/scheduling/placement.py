"""The root scheduler: which cluster should run a task, judged from aggregates only.

A cluster qualifies when one of its capacity groups offers the task's runtime, carries
its labels (a label may come from the cluster's own labels instead), honours its TEE
rule and has a worker with room for its cpu and memory; the cluster must also be
allowed, not have rejected the task, and lie within the task's geo radius. The cluster's
own scheduler then picks a worker, and may reject: the root then ranks again with that
cluster excluded. A pinned task goes to its cluster whatever the filters say
(pass-through), so the cluster's answer is the one that counts.

A qualifying cluster without a free slot still ranks (after every cluster with one): it
queues the task rather than leaving it unplaced at the root.

A task naming an artifact prefers, among the qualifying clusters with a free slot, those
whose aggregate says a worker holds it (then the usual order among them): a tie-breaker,
never a wait nor a way round a filter.

An aggregate is a few seconds old. The tasks the root has sent a cluster since it was
made (``ClusterView.inflight``) are booked on the cluster's groups before anything is
placed, as a plan books its own placements: otherwise tasks submitted one at a time all
went to the cluster that looked best in the last aggregate (8 of 8 on one of two equal
clusters).

A task of a spread group goes, among the qualifying clusters with a free slot (or, when
none has one, among all qualifying ones), to those with the fewest live tasks of its
group (``ClusterView.spread``, plus this plan's): per eligible worker when it spreads
over workers, per cluster when over clusters; the usual order picks among those. With
required anti-affinity a cluster qualifies only while it has an eligible worker without
one (over workers), or none at all (over clusters).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import NamedTuple

from edgeplane.errors import Invalid
from edgeplane.scheduling.capacity import CPU_SLACK
from edgeplane.scheduling.eligibility import LabelItems, format_labels
from edgeplane.scheduling.snapshot import (
    Booked,
    ClusterView,
    GeoPoint,
    GroupView,
    Plan,
    TaskDemand,
    spread_group,
)

EARTH_RADIUS_KM = 6371.0088
"""The mean Earth radius (IUGG): good to about 0.5 % for haversine distances."""

#: (no free slot, ±free slots, ±free cpu, ±free memory, cluster position): smaller is better
Key = tuple[int, float, float, float, int]

_cluster_key = attrgetter("order", "id")


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle (haversine) distance between two points given in degrees."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    half_dphi = (phi2 - phi1) / 2
    half_dlambda = math.radians(lon2 - lon1) / 2
    h = math.sin(half_dphi) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(half_dlambda) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


@dataclass(frozen=True, slots=True)
class Ranking:
    """The clusters that could take a task, best first; when none, why not."""

    candidates: tuple[str, ...]
    reason: str | None


class _Need(NamedTuple):
    """The part of a task that decides which clusters qualify regardless of capacity."""

    runtime: str
    labels: LabelItems
    tee: str
    cluster_id: str | None
    clusters: frozenset[str]
    exclude: frozenset[str]
    geo: GeoPoint | None
    bridge: bool

    @classmethod
    def of(cls, task: TaskDemand) -> _Need:
        return cls(
            task.runtime,
            tuple(sorted(task.labels.items())),
            task.tee,
            task.cluster_id,
            task.clusters,
            task.exclude,
            task.geo,
            task.bridge,
        )


def _listing(parts: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    if len(parts) < 2:
        return "".join(parts)
    return f"{', '.join(parts[:-1])} and {parts[-1]}"


def _resources(cpu: float, memory_mb: int) -> list[str]:
    parts = []
    if cpu > 0:
        parts.append(f"{cpu:g} free cpu")
    if memory_mb > 0:
        parts.append(f"{memory_mb} MB free memory")
    return parts


class _Board:
    """Clusters by (order, id) and their groups' free capacity in flat lists indexed by
    group number; a plan shrinks the lists as it assigns, never the views."""

    def __init__(self, clusters: Sequence[ClusterView]) -> None:
        self.clusters = sorted(clusters, key=_cluster_key)
        self.position = {cluster.id: pos for pos, cluster in enumerate(self.clusters)}
        if len(self.position) != len(self.clusters):
            raise Invalid("cluster ids must be unique", field="clusters")
        self.groups: list[GroupView] = []
        self.owner: list[int] = []
        self.group_range: list[range] = []
        for pos, cluster in enumerate(self.clusters):
            start = len(self.groups)
            self.groups.extend(cluster.groups)
            self.owner.extend([pos] * len(cluster.groups))
            self.group_range.append(range(start, len(self.groups)))
        groups = self.groups
        self.slots = [group.free_slots for group in groups]
        self.cpu = [group.free_cpu_sum for group in groups]
        self.cpu_max = [group.free_cpu_max for group in groups]
        self.memory = [group.free_memory_sum for group in groups]
        self.memory_max = [group.free_memory_max for group in groups]
        self._by_runtime: dict[str, list[int]] | None = None

    # --- static filters ---------------------------------------------------------------

    def offers(self, g: int, runtime: str) -> bool:
        group = self.groups[g]
        return group.workers > 0 and group.runtime == runtime

    def labelled(self, g: int, labels: LabelItems) -> bool:
        """Each label is met by the cluster's own labels or by the group's."""
        own, mine = self.clusters[self.owner[g]].labels, self.groups[g].labels
        return all(own.get(key) == value or mine.get(key) == value for key, value in labels)

    def tee_allows(self, g: int, tee: str) -> bool:
        group = self.groups[g]
        if tee == "required":
            return group.tee > 0
        if tee == "none":
            return group.workers - group.tee > 0
        return group.workers > 0

    def bridged(self, g: int, bridge: bool) -> bool:
        """A task with ``network: bridge`` needs a worker of the group that has one."""
        return not bridge or self.groups[g].bridge > 0

    def near(self, pos: int, geo: GeoPoint) -> bool:
        location = self.clusters[pos].location
        if location is None:
            return False
        return distance_km(geo.lat, geo.lon, *location) <= geo.radius_km

    def matching(self, g: int, need: _Need) -> bool:
        return (
            self.offers(g, need.runtime)
            and self.labelled(g, need.labels)
            and self.tee_allows(g, need.tee)
            and self.bridged(g, need.bridge)
        )

    def by_runtime(self, runtime: str) -> list[int]:
        if self._by_runtime is None:
            index: dict[str, list[int]] = {}
            for g, group in enumerate(self.groups):
                if group.workers > 0:
                    index.setdefault(group.runtime, []).append(g)
            self._by_runtime = index
        return self._by_runtime.get(runtime, [])

    def members(self, need: _Need) -> dict[int, tuple[int, ...]]:
        """Cluster position → its groups passing every static filter (unpinned ``need``)."""
        found: dict[int, list[int]] = {}
        allowed, exclude, geo = need.clusters, need.exclude, need.geo
        near: dict[int, bool] = {}
        for g in self.by_runtime(need.runtime):
            pos = self.owner[g]
            cluster_id = self.clusters[pos].id
            if (allowed and cluster_id not in allowed) or cluster_id in exclude:
                continue
            if geo is not None:
                inside = near.get(pos)
                if inside is None:
                    inside = near[pos] = self.near(pos, geo)
                if not inside:
                    continue
            if (
                self.labelled(g, need.labels)
                and self.tee_allows(g, need.tee)
                and self.bridged(g, need.bridge)
            ):
                found.setdefault(pos, []).append(g)
        return {pos: tuple(groups) for pos, groups in found.items()}

    # --- capacity -----------------------------------------------------------------------

    def fits(self, g: int, cpu: float, memory_mb: int) -> bool:
        """Some worker of the group may have the room: a zero request always fits."""
        return (cpu <= 0 or self.cpu_max[g] >= cpu - CPU_SLACK) and (
            memory_mb <= 0 or self.memory_max[g] >= memory_mb
        )

    def fitting(self, groups: Iterable[int], cpu: float, memory_mb: int) -> list[int]:
        return [g for g in groups if self.fits(g, cpu, memory_mb)]

    def key(self, pos: int, fitting: Sequence[int], *, pack: bool) -> Key:
        """Spread: most free slots, cpu, memory; pack: fewest free slots above zero, then
        least cpu and memory. Without a free slot: the least queued by this plan first."""
        free = queued = 0
        cpu = memory = 0.0
        for g in fitting:
            slots = self.slots[g]
            if slots > 0:
                free += slots
            else:
                queued -= slots
            cpu += self.cpu[g]
            memory += self.memory[g]
        if free > 0:
            return (0, free, cpu, memory, pos) if pack else (0, -free, -cpu, -memory, pos)
        return (1, queued, -cpu, -memory, pos)

    def pick(self, fitting: Sequence[int], *, pack: bool) -> int:
        """The group of a chosen cluster that takes the task, by the same rule as
        :meth:`key` ranks clusters."""
        slots, cpu, memory = self.slots, self.cpu, self.memory
        roomy = [g for g in fitting if slots[g] > 0]
        if roomy and pack:
            return min(roomy, key=lambda g: (slots[g], cpu[g], memory[g], g))
        return min(roomy or fitting, key=lambda g: (-slots[g], -cpu[g], -memory[g], g))

    def take(self, g: int, cpu: float, memory_mb: int) -> None:
        """Book a task on group ``g``. Which worker runs it is the cluster's choice, so the
        largest free amount stays, capped by the group's remaining sum."""
        self.slots[g] -= 1
        self.cpu[g] -= cpu
        self.memory[g] -= memory_mb
        self.cpu_max[g] = min(self.cpu_max[g], self.cpu[g])
        self.memory_max[g] = min(self.memory_max[g], self.memory[g])

    def book_inflight(self, *, pack: bool) -> None:
        """Book every cluster's in-flight tasks on the group the cluster would use for
        them (as :meth:`pick` chooses), even when none has room: they are there."""
        for pos, cluster in enumerate(self.clusters):
            for booked in cluster.inflight:
                groups = [g for g in self.group_range[pos] if self.takes(g, booked)]
                if groups:
                    fitting = self.fitting(groups, booked.cpu, booked.memory_mb)
                    g = self.pick(fitting or groups, pack=pack)
                    self.take(g, booked.cpu, booked.memory_mb)

    def takes(self, g: int, booked: Booked) -> bool:
        return (
            self.offers(g, booked.runtime)
            and self.labelled(g, booked.labels)
            and self.tee_allows(g, booked.tee)
            and self.bridged(g, booked.bridge)
        )

    def holds(self, key: Key, artifact: str | None) -> bool:
        """The cluster of ``key`` has a free slot and says a worker of it holds
        ``artifact``."""
        return key[0] == 0 and artifact in self.clusters[key[-1]].artifacts

    # --- reasons ------------------------------------------------------------------------

    def reason(self, need: _Need, cpu: float, memory_mb: int) -> str:
        """Why no cluster qualifies: the first filter that left nobody.

        Filters run allowed list, geo, runtime, labels, TEE, bridge, room, rejections. A message
        names an earlier filter only when a cluster outside it would have passed, so "no
        cluster within 50 km offers runtime 'wasm'" is never said while none offers it.
        """
        if need.cluster_id is not None:
            return f"pinned cluster {need.cluster_id} is not online"
        if not self.clusters:
            return "no cluster online"
        base = list(range(len(self.clusters)))
        noun = "cluster"
        if need.clusters:
            base = [pos for pos in base if self.clusters[pos].id in need.clusters]
            if not base:
                allowed = ", ".join(sorted(need.clusters))
                return f"none of the allowed clusters ({allowed}) is online"
            noun = "allowed cluster"
        where, pool = noun, base
        if need.geo is not None:
            geo = need.geo
            place = f"within {geo.radius_km:g} km of ({geo.lat:g}, {geo.lon:g})"
            pool = [pos for pos in base if self.near(pos, geo)]
            if not pool:
                return f"no {noun} {place}"
            where = f"{noun} {place}"
        every = [g for pos in base for g in self.group_range[pos] if self.groups[g].workers > 0]
        local = [g for pos in pool for g in self.group_range[pos] if self.groups[g].workers > 0]
        left = [g for g in local if self.groups[g].runtime == need.runtime]
        if not left:
            who = where if any(self.groups[g].runtime == need.runtime for g in every) else noun
            return f"no {who} offers runtime '{need.runtime}'"
        wanted = [f"runtime '{need.runtime}'"]
        if need.labels:
            labels = f"labels {format_labels(need.labels)}"
            labelled = [g for g in left if self.labelled(g, need.labels)]
            if not labelled:
                if not any(self.labelled(g, need.labels) for g in every):
                    return f"no {noun} has workers with {labels}"
                if not any(self.labelled(g, need.labels) for g in local):
                    return f"no {where} has workers with {labels}"
                return f"no {where} has workers with {_listing([*wanted, labels])}"
            left = labelled
            wanted.append(labels)
        if need.tee != "any":
            secure = [g for g in left if self.tee_allows(g, need.tee)]
            if not secure:
                if not any(self.tee_allows(g, need.tee) for g in every):
                    rule = "with" if need.tee == "required" else "without"
                    return f"no {noun} has a worker {rule} a TEE"
                tee = "a TEE" if need.tee == "required" else "no TEE"
                return f"no {where} has a worker with {_listing([*wanted, tee])}"
            left = secure
            wanted.append("a TEE" if need.tee == "required" else "no TEE")
        if need.bridge:
            bridged = [g for g in left if self.bridged(g, True)]
            if not bridged:
                why = "(the task has network: bridge)"
                if not any(self.bridged(g, True) for g in every):
                    return f"no {noun} has a worker with a bridge network {why}"
                net = "a bridge network"
                return f"no {where} has a worker with {_listing([*wanted, net])} {why}"
            left = bridged
            wanted.append("a bridge network")
        roomy = self.fitting(left, cpu, memory_mb)
        if not roomy:
            room = _resources(cpu, memory_mb)
            if not self.fitting(every, cpu, memory_mb):
                return f"no {noun} has a worker with {_listing(room)}"
            return f"no {where} has a worker with {_listing([*wanted, *room])}"
        rejected = sorted({self.clusters[self.owner[g]].id for g in roomy})
        return f"rejected by {', '.join(rejected)}"


def rank_clusters(
    clusters: Sequence[ClusterView], task: TaskDemand, *, pack: bool = False
) -> Ranking:
    """Every cluster that could take ``task``, best first (spread, or bin-pack with
    ``pack``); when none could, the reason. A pinned task ranks only its cluster."""
    board = _Board(clusters)
    board.book_inflight(pack=pack)
    need = _Need.of(task)
    if need.cluster_id is not None:
        if need.cluster_id in board.position:
            return Ranking((need.cluster_id,), None)
        return Ranking((), board.reason(need, task.cpu, task.memory_mb))
    keys = []
    for pos, groups in board.members(need).items():
        fitting = board.fitting(groups, task.cpu, task.memory_mb)
        if fitting:
            keys.append(board.key(pos, fitting, pack=pack))
    if not keys:
        return Ranking((), board.reason(need, task.cpu, task.memory_mb))
    keys.sort()
    if task.artifact is not None:
        # stable: holders with a free slot first, each part in the usual order
        keys.sort(key=lambda key: not board.holds(key, task.artifact))
    return Ranking(tuple(board.clusters[key[-1]].id for key in keys), None)


@dataclass
class _Choice:
    """The qualifying clusters for one requirement and one demand, in a heap.

    ``current`` holds each live cluster's key; heap entries that are not that very key are
    stale and skipped. Before each use the clusters booked since (``seen`` in the board's
    change log) get a fresh key, so the heap is right whichever way a key moved.
    """

    members: Mapping[int, tuple[int, ...]]
    heap: list[Key]
    current: dict[int, Key]
    seen: int
    reason: str | None = None
    #: (spread group, over, distinct, artifact) → its ranking of the clusters
    spread: dict[tuple[str, str, bool, str | None], _Spread] = field(default_factory=dict)
    #: cluster position → the workers of its groups that pass the static filters
    workers: dict[int, int] = field(default_factory=dict)


#: (no free slot, fewest of the group, not holding the artifact, the cluster's key)
Rank = tuple[int, float, bool, Key]


@dataclass
class _Spread:
    """The clusters allowed for one spread group, by :data:`Rank`, in a heap kept as
    :class:`_Choice`'s is: ``ranks`` holds the current rank, ``seen`` the change log's
    length when it was last brought up to date."""

    heap: list[Rank]
    ranks: dict[int, Rank]
    seen: int


class _Placer:
    def __init__(self, clusters: Sequence[ClusterView], pack: bool) -> None:
        self.board = _Board(clusters)
        self.board.book_inflight(pack=pack)
        self.pack = pack
        self.members: dict[_Need, dict[int, tuple[int, ...]]] = {}
        self.choices: dict[tuple[_Need, float, int], _Choice] = {}
        self.booked: list[int] = []
        #: spread group → live tasks of it per cluster position, this plan's included
        self.spread: dict[str, list[int]] = {}

    def counts(self, key: str) -> list[int]:
        found = self.spread.get(key)
        if found is None:
            found = self.spread[key] = [c.spread.get(key, 0) for c in self.board.clusters]
        return found

    def choice(self, need: _Need, cpu: float, memory_mb: int) -> _Choice:
        found = self.choices.get((need, cpu, memory_mb))
        if found is not None:
            return found
        members = self.members.get(need)
        if members is None:
            members = self.members[need] = self.board.members(need)
        current: dict[int, Key] = {}
        for pos, groups in members.items():
            fitting = self.board.fitting(groups, cpu, memory_mb)
            if fitting:
                current[pos] = self.board.key(pos, fitting, pack=self.pack)
        heap = list(current.values())
        heapq.heapify(heap)
        found = _Choice(members, heap, current, seen=len(self.booked))
        self.choices[need, cpu, memory_mb] = found
        return found

    def best(self, choice: _Choice, cpu: float, memory_mb: int) -> int | None:
        """The best cluster for ``choice`` now, or None when none qualifies any more."""
        board, heap, current = self.board, choice.heap, choice.current
        for pos in dict.fromkeys(self.booked[choice.seen :]):
            groups = choice.members.get(pos)
            if groups is None or pos not in current:
                continue
            fitting = board.fitting(groups, cpu, memory_mb)
            if fitting:
                key = current[pos] = board.key(pos, fitting, pack=self.pack)
                heapq.heappush(heap, key)
            else:
                # capacity only shrinks within a plan: a cluster that stopped fitting
                # never fits again
                del current[pos]
        choice.seen = len(self.booked)
        while heap:
            top = heap[0]
            if current.get(top[-1]) is top:
                return top[-1]
            heapq.heappop(heap)
        return None

    def book(self, pos: int, groups: Iterable[int], cpu: float, memory_mb: int) -> None:
        fitting = self.board.fitting(groups, cpu, memory_mb)
        if fitting:
            self.board.take(self.board.pick(fitting, pack=self.pack), cpu, memory_mb)
            self.booked.append(pos)

    def place(self, task: TaskDemand) -> tuple[bool, str]:
        """``(True, cluster id)`` for the chosen cluster, or ``(False, why it waits)``."""
        need = _Need.of(task)
        cpu, memory_mb = task.cpu, task.memory_mb
        board = self.board
        if need.cluster_id is not None:
            pinned = board.position.get(need.cluster_id)
            if pinned is None:
                return False, board.reason(need, cpu, memory_mb)
            mine = [g for g in board.group_range[pinned] if board.matching(g, need)]
            self.book(pinned, mine, cpu, memory_mb)
            if task.spread is not None:
                self.counts(task.spread)[pinned] += 1
                self.booked.append(pinned)  # (the spread rankings refresh from the log)
            return True, need.cluster_id
        choice = self.choice(need, cpu, memory_mb)
        if choice.reason is not None:
            return False, choice.reason
        pos = self.best(choice, cpu, memory_mb)
        if pos is None:
            choice.reason = board.reason(need, cpu, memory_mb)
            return False, choice.reason
        artifact = task.artifact
        if task.spread is not None:
            spread = self.spread_pick(task, task.spread, choice)
            if spread is None:
                return False, _refusal(task)
            pos = spread
        elif artifact is not None and artifact not in board.clusters[pos].artifacts:
            # ``best`` refreshed every key: the best holder with a free slot, if any
            held = [key for key in choice.current.values() if board.holds(key, artifact)]
            if held:
                pos = min(held)[-1]
        self.book(pos, choice.members[pos], cpu, memory_mb)  # (logs pos: it fits)
        if task.spread is not None:
            self.counts(task.spread)[pos] += 1
        return True, board.clusters[pos].id

    def spread_pick(self, task: TaskDemand, key: str, choice: _Choice) -> int | None:
        """The cluster for a task of spread group ``key`` among those ``choice`` holds
        (their keys fresh from :meth:`best`); None when anti-affinity leaves none.

        Clusters with a free slot first; then the fewest of the group (per eligible
        worker over workers, per cluster over clusters); then the artifact holders; then
        the usual key. A heap, refreshed for the clusters booked or counted since: one
        scan of 1,000 clusters per replica cost 0.7 ms."""
        which = (key, task.spread_over, task.distinct, task.artifact)
        state = choice.spread.get(which)
        if state is None:
            ranks = {}
            for pos in choice.current:
                rank = self.rank(task, key, choice, pos)
                if rank is not None:
                    ranks[pos] = rank
            heap = list(ranks.values())
            heapq.heapify(heap)
            state = choice.spread[which] = _Spread(heap, ranks, len(self.booked))
        else:
            for pos in dict.fromkeys(self.booked[state.seen :]):
                if pos not in state.ranks:
                    continue  # not allowed, or not fitting: neither changes back
                rank = self.rank(task, key, choice, pos) if pos in choice.current else None
                if rank is None:
                    del state.ranks[pos]
                else:
                    state.ranks[pos] = rank
                    heapq.heappush(state.heap, rank)
            state.seen = len(self.booked)
        heap, ranks = state.heap, state.ranks
        while heap:
            top = heap[0]
            if ranks.get(top[-1][-1]) is top:
                return top[-1][-1]
            heapq.heappop(heap)
        return None

    def rank(self, task: TaskDemand, key: str, choice: _Choice, pos: int) -> Rank | None:
        """Where cluster ``pos`` stands for a task of spread group ``key``; None when
        anti-affinity rules it out."""
        count = self.counts(key)[pos]
        if task.spread_over == "worker":
            workers = choice.workers.get(pos)
            if workers is None:
                groups = self.board.groups
                workers = choice.workers[pos] = sum(groups[g].workers for g in choice.members[pos])
            if task.distinct and count >= workers:
                return None
            score = count / workers
        else:
            if task.distinct and count:
                return None
            score = float(count)
        key_now = choice.current[pos]
        return (key_now[0], score, not self.board.holds(key_now, task.artifact), key_now)


def _refusal(task: TaskDemand) -> str:
    group = spread_group(task.spread or "")
    if task.spread_over == "cluster":
        return (
            "anti-affinity required (spread over clusters): every eligible cluster already "
            f"runs a task of spread group '{group}'"
        )
    return (
        "anti-affinity required (spread over workers): every eligible worker of every "
        f"eligible cluster already runs a task of spread group '{group}'"
    )


def _priority_key(task: TaskDemand) -> tuple[int, float]:
    return (-task.priority, task.seq)


def place_on_clusters(
    clusters: Sequence[ClusterView], tasks: Sequence[TaskDemand], *, pack: bool = False
) -> Plan:
    """Place ``tasks`` (higher priority first, then ``seq``) each on its best cluster.

    Capacity shrinks as the plan grows, so a batch spreads (or packs) instead of piling
    onto the cluster that looked best at the start. Assignments are
    ``(task_id, cluster_id)``; ``cursor`` is unused at the root and always 0.
    """
    if len({task.id for task in tasks}) != len(tasks):
        raise Invalid("task ids must be unique", field="tasks")
    placer = _Placer(clusters, pack)
    assignments: list[tuple[str, str]] = []
    waiting: dict[str, str] = {}
    for task in sorted(tasks, key=_priority_key):
        placed, answer = placer.place(task)
        if placed:
            assignments.append((task.id, answer))
        else:
            waiting[task.id] = answer
    return Plan(assignments=tuple(assignments), waiting=waiting, cursor=0)
