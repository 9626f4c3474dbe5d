"""The manager's live view of its workers: who is online, their slots and their tasks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from edgeplane.model import Aggregate, ClusterInfo, Worker
from edgeplane.scheduling import ClusterView, WorkerView
from edgeplane.scheduling.aggregate import cluster_view


@dataclass(frozen=True)
class Reservation:
    """A task placed on a worker: which ``task.start`` carried it and what it asked for."""

    #: the ``seq`` of that command; None until it is sent, 0 when recovered after a restart
    seq: int | None
    #: the worker session it was sent to ("" when the manager did not know it yet)
    session: str
    cpu: float = 0.0
    memory_mb: int = 0
    #: a daemon holds its slot for good: no queued task may wait behind it
    daemon: bool = False


@dataclass
class WorkerEntry:
    worker: Worker
    session: str = ""
    last_seen: float = 0.0  # manager's monotonic clock
    draining: bool = False
    tasks: dict[str, Reservation] = field(default_factory=dict)
    #: sequence number of the last ``task.start`` sent to this worker
    sent_seq: int = 0
    #: artifact digests this worker session already received
    artifacts: set[str] = field(default_factory=set)
    #: at the root, where members are clusters: their metadata and last aggregate
    info: ClusterInfo | None = None
    aggregate: Aggregate | None = None
    _labels: Mapping[str, str] = field(default_factory=dict, repr=False)
    _labels_of: object = field(default=None, repr=False)

    @property
    def online(self) -> bool:
        return self.worker.state != "offline"

    def view(self, order: int) -> WorkerView:
        caps = self.worker.capabilities
        if self._labels_of is not caps:  # frozen once per capabilities document
            self._labels, self._labels_of = MappingProxyType(dict(caps.labels)), caps
        used_cpu = sum(r.cpu for r in self.tasks.values())
        used_memory = sum(r.memory_mb for r in self.tasks.values())
        # Slots times the worker's prefetch, so it always has the next tasks at hand; but
        # only slots that are not held by daemons may have tasks queued behind them.
        daemons = min(caps.slots, sum(r.daemon for r in self.tasks.values()))
        capacity = daemons + (caps.slots - daemons) * max(1, caps.prefetch)
        return WorkerView(
            id=self.worker.id,
            runtimes=frozenset(caps.runtimes),
            labels=self._labels,
            tee=frozenset(caps.tee),
            free_slots=max(0, capacity - len(self.tasks)),
            free_cpu=max(0.0, caps.cpus - used_cpu),
            free_memory_mb=max(0, caps.memory_mb - used_memory),
            order=order,
            accelerators=len(caps.accelerators),
        )

    def cluster_view(self, order: int) -> ClusterView | None:
        if self.aggregate is None:
            return None
        info = self.info or ClusterInfo()
        return cluster_view(
            self.worker.id, order, self.aggregate, labels=info.labels, location=info.location
        )


class Registry:
    """Workers by id, in registration order (the round-robin ring)."""

    def __init__(self) -> None:
        self._entries: dict[str, WorkerEntry] = {}

    def __contains__(self, worker_id: object) -> bool:
        return worker_id in self._entries

    def get(self, worker_id: str) -> WorkerEntry | None:
        return self._entries.get(worker_id)

    def add(self, entry: WorkerEntry) -> None:
        self._entries[entry.worker.id] = entry

    def remove(self, worker_id: str) -> WorkerEntry | None:
        return self._entries.pop(worker_id, None)

    def entries(self) -> list[WorkerEntry]:
        return list(self._entries.values())

    def cluster_views(self) -> list[ClusterView]:
        """The online clusters of a root that have sent an aggregate."""
        views = (
            entry.cluster_view(order)
            for order, entry in enumerate(self._entries.values())
            if entry.online and not entry.draining
        )
        return [view for view in views if view is not None]

    def schedulable(self) -> list[WorkerView]:
        return [
            entry.view(order)
            for order, entry in enumerate(self._entries.values())
            if entry.online and not entry.draining
        ]
