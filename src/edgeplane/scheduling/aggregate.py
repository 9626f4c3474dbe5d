"""What a cluster tells the root: its workers' free capacity folded into groups.

Only these aggregates go up (Oakestra's design), so the root scales with the number of
clusters, not workers. A group is the workers that offer one runtime and share one label
set; a worker offering two runtimes counts in two groups.

Negative free amounts (a worker over-committed by tasks already running) count as zero:
to the root, free capacity is what another task could still use.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from types import MappingProxyType
from typing import TypeVar

from edgeplane.model.cluster import (
    AGGREGATE_ARTIFACTS,
    Aggregate,
    CapacityGroup,
    FreeStats,
    Location,
)
from edgeplane.scheduling.eligibility import LabelItems
from edgeplane.scheduling.snapshot import Booked, ClusterView, GroupView, WorkerView

CHANGE_THRESHOLD = 0.2
"""Relative move of free slots or of the largest free cpu/memory that makes a manager
send its aggregate at once instead of waiting for the next ``aggregate_interval_s``."""

_NO_LABELS: Mapping[str, str] = MappingProxyType({})
_NO_COUNTS: Mapping[str, int] = MappingProxyType({})

_free_slots = attrgetter("free_slots")
_free_cpu = attrgetter("free_cpu")
_free_memory = attrgetter("free_memory_mb")
_tee = attrgetter("tee")
_accelerators = attrgetter("accelerators")
_bridge = attrgetter("bridge")
_artifacts = attrgetter("artifacts")

GroupKey = tuple[str, LabelItems]
Amount = TypeVar("Amount", int, float)


def _floored(values: list[Amount]) -> list[Amount]:
    """``values`` with negatives as zero (``v - v``: a zero of v's own type); the common
    all-positive case costs one C pass."""
    if values and min(values) < 0:
        return [v if v > 0 else v - v for v in values]
    return values


def _count_truthy(values: Iterable[object]) -> int:
    """How many values are non-empty / non-zero, at C speed (``sum`` of bools is not)."""
    return len(list(filter(None, values)))


@dataclass(frozen=True, slots=True)
class _Moments:
    """Count, sum, largest value and summed squared deviations: enough to merge the
    statistics of disjoint parts (Chan et al.'s pairwise formula) without rescanning."""

    count: int
    total: float
    top: float
    squares: float

    @classmethod
    def of(cls, values: Sequence[float]) -> _Moments:
        """Each figure a C-speed pass; ``math.dist`` to the all-mean point is the root of
        the summed squared deviations, the two-pass formula without a Python loop."""
        count = len(values)
        total = math.fsum(values)
        spread = math.dist(values, [total / count] * count)
        return cls(count, total, max(values), spread * spread)

    @staticmethod
    def merge(parts: Sequence[_Moments]) -> FreeStats:
        count = sum(part.count for part in parts)
        total = math.fsum(part.total for part in parts)
        mean = total / count
        squares = math.fsum(
            part.squares + part.count * (part.total / part.count - mean) ** 2 for part in parts
        )
        top = max(part.top for part in parts)
        return FreeStats(count=count, sum=total, mean=mean, std=math.sqrt(squares / count), max=top)


@dataclass(frozen=True, slots=True)
class _Class:
    """The figures of workers with equal runtimes and labels, computed once per worker."""

    workers: int
    free_slots: int
    cpu: _Moments
    memory: _Moments
    tee: int
    accelerators: int
    bridge: int

    @classmethod
    def of(cls, members: list[WorkerView]) -> _Class:
        return cls(
            workers=len(members),
            free_slots=sum(_floored(list(map(_free_slots, members)))),
            cpu=_Moments.of(_floored(list(map(_free_cpu, members)))),
            memory=_Moments.of(_floored(list(map(_free_memory, members)))),
            tee=_count_truthy(map(_tee, members)),
            accelerators=_count_truthy(map(_accelerators, members)),
            bridge=_count_truthy(map(_bridge, members)),
        )


def _group(runtime: str, labels: LabelItems, parts: list[_Class]) -> CapacityGroup:
    return CapacityGroup(
        runtime=runtime,
        labels=dict(labels),
        workers=sum(part.workers for part in parts),
        free_slots=sum(part.free_slots for part in parts),
        cpu=_Moments.merge([part.cpu for part in parts]),
        memory_mb=_Moments.merge([part.memory for part in parts]),
        tee=sum(part.tee for part in parts),
        accelerators=sum(part.accelerators for part in parts),
        bridge=sum(part.bridge for part in parts),
    )


def aggregate(
    workers: Sequence[WorkerView],
    *,
    location: Location | None = None,
    ts: float = 0.0,
    epoch: str = "",
    seq: int = 0,
) -> Aggregate:
    """Fold ``workers`` (the online, schedulable ones) into one :class:`Aggregate`.

    One Python-level pass sorts workers into classes of equal runtimes and labels (as
    listed: two orders of one label set make two classes that meet again in their
    groups). Each class is measured once at C speed; groups and the cluster-wide
    figures merge class figures, so a worker in two groups is not measured twice.
    """
    members_of: dict[tuple[frozenset[str], LabelItems], list[WorkerView]] = {}
    for worker in workers:
        key = (worker.runtimes, tuple(worker.labels.items()))
        members = members_of.get(key)
        if members is None:
            members_of[key] = [worker]
        else:
            members.append(worker)
    classes = [_Class.of(members) for members in members_of.values()]
    grouped: dict[GroupKey, list[_Class]] = {}
    for (runtimes, labels), part in zip(members_of, classes, strict=True):
        items = tuple(sorted(labels))
        for runtime in runtimes:
            grouped.setdefault((runtime, items), []).append(part)
    return Aggregate(
        workers=len(workers),
        free_slots=sum(part.free_slots for part in classes),
        groups=[_group(rt, labels, grouped[rt, labels]) for rt, labels in sorted(grouped)],
        max_free_cpu=max((part.cpu.top for part in classes), default=0.0),
        max_free_memory_mb=int(max((part.memory.top for part in classes), default=0)),
        tee=sum(part.tee for part in classes),
        accelerators=sum(part.accelerators for part in classes),
        bridge=sum(part.bridge for part in classes),
        location=location,
        ts=ts,
        epoch=epoch,
        seq=seq,
        artifacts=held_most(workers),
    )


def held_most(workers: Sequence[WorkerView], limit: int = AGGREGATE_ARTIFACTS) -> list[str]:
    """The ``limit`` digests held by the most workers (ties: by digest, so the list is
    stable between aggregates; among thousands of digests, see below).

    Workers that report the same set share one frozenset object (the registry keeps an
    unchanged report), and equal sets are counted once with their multiplicity, so the
    usual cluster (a few modules, many workers) costs one C-speed pass over the workers."""
    sets = list(map(_artifacts, workers))
    if not any(sets):
        return []
    distinct = Counter(sets)
    if len(distinct) * 4 > len(sets):  # mostly different sets: count every entry in C
        counts = Counter(chain.from_iterable(sets))
    else:
        counts = Counter()
        for held, times in distinct.items():
            for digest in held:
                counts[digest] += times
    # Many digests: a heap picks the top ones (which of several tied at the cut goes in
    # then follows the workers' order), then only those are sorted.
    top = counts.most_common(limit) if len(counts) > 16 * limit else counts.items()
    ranked = sorted(top, key=lambda item: (-item[1], item[0]))
    return [digest for digest, _ in ranked[:limit]]


def cluster_view(
    cluster_id: str,
    order: int,
    aggregate: Aggregate,
    *,
    labels: Mapping[str, str] = _NO_LABELS,
    location: Location | None = None,
    spread: Mapping[str, int] = _NO_COUNTS,
    inflight: Sequence[Booked] = (),
) -> ClusterView:
    """The root scheduler's frozen view of one cluster; ``location`` overrides the
    aggregate's (a cluster's registered location is the operator's word). ``spread``
    and ``inflight`` are the root's own: its live tasks there by spread group, and
    those sent after the aggregate was made."""
    where = location if location is not None else aggregate.location
    return ClusterView(
        id=cluster_id,
        order=order,
        groups=tuple(
            GroupView(
                runtime=group.runtime,
                labels=group.labels,
                workers=group.workers,
                free_slots=group.free_slots,
                free_cpu_sum=group.cpu.sum,
                free_cpu_max=group.cpu.max,
                free_memory_sum=group.memory_mb.sum,
                free_memory_max=group.memory_mb.max,
                tee=group.tee,
                bridge=group.bridge,
            )
            for group in aggregate.groups
        ),
        labels=labels,
        location=None if where is None else (where.lat, where.lon),
        artifacts=frozenset(aggregate.artifacts),
        spread=spread,
        inflight=tuple(inflight),
    )


def _moved(old: float, new: float, threshold: float) -> bool:
    """Whether ``old`` → ``new`` is a relative move of at least ``threshold`` (4.0 → 4.8
    is, float rounding aside), or from or to zero."""
    if old == new:
        return False
    if old == 0 or new == 0:
        return True
    move, limit = abs(new - old), threshold * abs(old)
    return move >= limit or math.isclose(move, limit)


def _key(group: CapacityGroup) -> GroupKey:
    return (group.runtime, tuple(sorted(group.labels.items())))


def significant_change(
    old: Aggregate | None, new: Aggregate, *, threshold: float = CHANGE_THRESHOLD
) -> bool:
    """Whether the root should hear ``new`` now rather than at the next interval.

    Besides the cluster-wide figures, each group's free slots and largest free cpu and
    memory are compared: the root filters and scores per group, so a runtime whose last
    free slot went is news even when the cluster as a whole barely moved.
    """
    if old is None or old.workers != new.workers or old.bridge != new.bridge:
        return True
    if (
        _moved(old.free_slots, new.free_slots, threshold)
        or _moved(old.max_free_cpu, new.max_free_cpu, threshold)
        or _moved(old.max_free_memory_mb, new.max_free_memory_mb, threshold)
    ):
        return True
    before = {_key(group): group for group in old.groups}
    after = {_key(group): group for group in new.groups}
    if before.keys() != after.keys():
        return True
    return any(
        _moved(was.free_slots, now.free_slots, threshold)
        or _moved(was.cpu.max, now.cpu.max, threshold)
        or _moved(was.memory_mb.max, now.memory_mb.max, threshold)
        for was, now in ((before[key], after[key]) for key in after)
    )
