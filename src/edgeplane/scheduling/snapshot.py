"""The scheduler's inputs and output: frozen values, so a plan depends on nothing else."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from edgeplane.errors import Invalid

TEE_RULES: tuple[str, ...] = ("any", "required", "none")
SPREAD_LEVELS: tuple[str, ...] = ("worker", "cluster")

_NO_COUNTS: Mapping[str, int] = MappingProxyType({})


def _frozen_labels(labels: Mapping[str, str]) -> Mapping[str, str]:
    """A read-only copy, so a caller mutating its dict cannot change a snapshot.

    A read-only mapping is taken as it is: callers that build many views (the registry,
    once per pass per worker) freeze each label set once and pass the same proxy."""
    if isinstance(labels, MappingProxyType):
        return labels
    return MappingProxyType(dict(labels))


def spread_group(key: str) -> str:
    """A spread group's name as the user gave it (its key is ``project/group``)."""
    return key.partition("/")[2] or key


def _frozen_counts(counts: Mapping[str, int]) -> Mapping[str, int]:
    """As :func:`_frozen_labels`, for spread counts."""
    if isinstance(counts, MappingProxyType):
        return counts
    return MappingProxyType(dict(counts))


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One online worker as the scheduler sees it: what it offers and what is free now."""

    id: str
    runtimes: frozenset[str]
    labels: Mapping[str, str] = field(hash=False)
    tee: frozenset[str]
    free_slots: int
    free_cpu: float
    free_memory_mb: int
    order: int
    #: how many accelerators the worker has (aggregates count workers with any)
    accelerators: int = 0
    #: whether it can give container tasks a bridge network (``network: bridge``)
    bridge: bool = False
    #: digests of artifacts the worker holds (its most recently used, bounded): tasks that
    #: need one prefer it among the workers that could take them
    artifacts: frozenset[str] = field(default=frozenset(), hash=False)
    # (A worker's live tasks per spread group are not here but a ``make_plan`` argument:
    # one more slot made every view a size class bigger, and plain placement over 10,000
    # workers 3 % slower, measured.)

    def __post_init__(self) -> None:
        object.__setattr__(self, "runtimes", frozenset(self.runtimes))
        object.__setattr__(self, "tee", frozenset(self.tee))
        object.__setattr__(self, "labels", _frozen_labels(self.labels))


@dataclass(frozen=True, slots=True)
class GeoPoint:
    """A point and a radius: only clusters located within ``radius_km`` qualify."""

    lat: float
    lon: float
    radius_km: float


@dataclass(frozen=True, slots=True)
class GroupView:
    """One capacity group of a cluster's aggregate (workers sharing a runtime and labels)."""

    runtime: str
    labels: Mapping[str, str] = field(hash=False)
    workers: int
    free_slots: int
    free_cpu_sum: float
    free_cpu_max: float
    free_memory_sum: float
    free_memory_max: float
    #: workers of the group with a TEE
    tee: int = 0
    #: workers of the group that can give tasks a bridge network
    bridge: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", _frozen_labels(self.labels))


@dataclass(frozen=True, slots=True)
class Booked:
    """A task the root has sent a cluster that the cluster's last aggregate does not show
    yet: the root books it on the cluster's groups before placing more."""

    runtime: str
    labels: tuple[tuple[str, str], ...] = ()
    tee: str = "any"
    cpu: float = 0.0
    memory_mb: int = 0
    bridge: bool = False


@dataclass(frozen=True, slots=True)
class ClusterView:
    """One online cluster as the root scheduler sees it, built from its last aggregate."""

    id: str
    order: int
    groups: tuple[GroupView, ...]
    #: the cluster's own labels (static metadata); a task label matches one of these or
    #: the labels of a group
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    #: (lat, lon) of the cluster, None when it did not say
    location: tuple[float, float] | None = None
    #: digests of artifacts some worker of the cluster holds (bounded, from its aggregate)
    artifacts: frozenset[str] = field(default=frozenset(), hash=False)
    #: spread group → live tasks of it the root has placed on the cluster
    spread: Mapping[str, int] = field(default_factory=lambda: _NO_COUNTS, hash=False)
    #: tasks sent to the cluster after its last aggregate was made (sorted is not needed)
    inflight: tuple[Booked, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", tuple(self.groups))
        object.__setattr__(self, "labels", _frozen_labels(self.labels))
        object.__setattr__(self, "spread", _frozen_counts(self.spread))
        object.__setattr__(self, "inflight", tuple(self.inflight))


@dataclass(frozen=True, slots=True)
class TaskDemand:
    """What one pending task needs from a worker."""

    id: str
    runtime: str
    priority: int = 50
    seq: float = 0.0
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    tee: str = "any"
    cpu: float = 0.0
    memory_mb: int = 0
    worker_id: str | None = None
    #: a container task with ``network: bridge`` (or published ports): only a worker that
    #: can give it a bridge network may run it
    bridge: bool = False
    #: root placement only: a pinned cluster (pass-through), the allowed clusters
    #: (empty: any), the clusters that rejected this task, and a geo constraint
    cluster_id: str | None = None
    clusters: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()
    geo: GeoPoint | None = None
    #: the sha256 of the module or image the task runs, when known: a soft preference
    #: for workers (clusters) that hold it, among those that could take the task anyway
    artifact: str | None = None
    #: the task's spread group (``project/group``): it goes where the fewest live tasks of
    #: the group run; ``spread_over`` is ``worker`` or ``cluster``; ``distinct`` (required
    #: anti-affinity) never puts two on one worker (one cluster, over ``cluster``)
    spread: str | None = None
    spread_over: str = "worker"
    distinct: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "clusters", frozenset(self.clusters))
        object.__setattr__(self, "exclude", frozenset(self.exclude))
        if self.tee not in TEE_RULES:
            raise Invalid(
                f"tee must be one of {', '.join(TEE_RULES)}, not {self.tee!r}", field="tee"
            )
        if self.spread_over not in SPREAD_LEVELS:
            raise Invalid(
                f"spread over must be one of {', '.join(SPREAD_LEVELS)}, not {self.spread_over!r}",
                field="spread.over",
            )
        if self.cpu < 0:
            raise Invalid("cpu must not be negative", field="cpu")
        if self.memory_mb < 0:
            raise Invalid("memory_mb must not be negative", field="memory_mb")
        object.__setattr__(self, "labels", _frozen_labels(self.labels))


@dataclass(frozen=True, slots=True)
class Plan:
    """What to dispatch, what stays pending and why, and where round-robin resumes."""

    assignments: tuple[tuple[str, str], ...]
    waiting: Mapping[str, str] = field(hash=False)
    cursor: int
