"""The manager's live view of its workers: who is online, their slots and their tasks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from edgeplane.manager.queue import needs_bridge
from edgeplane.model import Aggregate, ClusterInfo, Task, Worker
from edgeplane.model.task import spread_key
from edgeplane.model.worker import Capabilities
from edgeplane.scheduling import ClusterView, WorkerView
from edgeplane.scheduling.aggregate import cluster_view
from edgeplane.scheduling.snapshot import Booked


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
    #: the task's spread group key (``model.task.spread_key``), if it has one
    spread: str | None = None
    #: what the root needs to book a task its cluster's aggregate does not show yet
    runtime: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    tee: str = "any"
    bridge: bool = False

    def booked(self) -> Booked:
        return Booked(
            self.runtime,
            tuple(sorted(self.labels.items())),
            self.tee,
            self.cpu,
            self.memory_mb,
            self.bridge,
        )


class Reservations(dict[str, Reservation]):
    """A member's reservations by task id; ``version`` moves with every change, so a
    view of the member built for one version serves until the next. ``spread`` counts
    them by spread group as they change, so a scheduling pass never counts them."""

    version = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spread: dict[str, int] = {}
        for reservation in self.values():
            self._count(reservation, 1)

    def _count(self, reservation: Reservation | None, step: int) -> None:
        key = None if reservation is None else reservation.spread
        if key is None:
            return
        left = self.spread.get(key, 0) + step
        if left > 0:
            self.spread[key] = left
        else:
            self.spread.pop(key, None)

    def __setitem__(self, task_id: str, reservation: Reservation) -> None:
        self._count(self.get(task_id), -1)
        super().__setitem__(task_id, reservation)
        self._count(reservation, 1)
        self.version += 1

    def __delitem__(self, task_id: str) -> None:
        gone = self[task_id]
        super().__delitem__(task_id)
        self._count(gone, -1)
        self.version += 1

    def pop(self, task_id: str, default: Any = None) -> Any:
        self.version += 1
        gone = super().pop(task_id, default)
        if isinstance(gone, Reservation):
            self._count(gone, -1)
        return gone


@dataclass
class WorkerEntry:
    worker: Worker
    session: str = ""
    last_seen: float = 0.0  # manager's monotonic clock
    draining: bool = False
    tasks: Reservations = field(default_factory=Reservations)
    #: sequence number of the last ``task.start`` sent to this worker
    sent_seq: int = 0
    #: artifact digests this worker session already received
    artifacts: set[str] = field(default_factory=set)
    #: artifact digests the worker says it holds (hello, alive): a scheduling preference
    held: frozenset[str] = frozenset()
    #: the broker published the last will of ``session``: its process is gone, another
    #: may take the id without waiting for the liveness verdict (membership.py)
    will_heard: bool = False
    #: a session refused because ``session`` held the member's id, alive
    refused: str = ""
    #: a cluster's: the lease lineage and term of the leader whose session is ``session``
    #: (Hello.lineage, Hello.term)
    lineage: str = ""
    term: int = 0
    #: at the root, where members are clusters: their metadata and last aggregate
    info: ClusterInfo | None = None
    aggregate: Aggregate | None = None
    _labels: Mapping[str, str] = field(default_factory=dict, repr=False)
    _labels_of: object = field(default=None, repr=False)
    #: the last view and what it was built from: (capabilities, order, tasks.version, held)
    _view: WorkerView | None = field(default=None, repr=False)
    _view_of: tuple[object, int, int, object] = field(default=(None, -1, -1, None), repr=False)
    #: the root's last view of this cluster, and (aggregate, info, order, version, epoch)
    _cluster: ClusterView | None = field(default=None, repr=False)
    _cluster_of: tuple[object, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.tasks, Reservations):
            self.tasks = Reservations(self.tasks)

    @property
    def online(self) -> bool:
        return self.worker.state != "offline"

    def hold(self, digests: list[str]) -> None:
        """Take the member's report of what it holds; the same set again keeps the view
        (heartbeats repeat it, and a view costs a scheduling pass to rebuild)."""
        held = frozenset(digests)
        if held != self.held:
            self.held = held

    @property
    def takes_tasks(self) -> bool:
        """Online, not draining, and heard by this manager process (a session): a member
        known only from the store after a restart gets nothing until its hello has been
        judged. A command from this process before it would make its hello look like
        a newer process's, and the recovered tasks whose commands the last manager never
        sent would be taken for lost instead of sent again (liveness.judge_hello)."""
        return self.online and not self.draining and bool(self.session)

    def view(self, order: int) -> WorkerView:
        """The member as the scheduler sees it. Built again only when its capabilities,
        its place in the registry or its reservations changed: at 10,000 workers, building
        every view cost a scheduling pass ~90 ms, and heartbeats change none of them."""
        caps = self.worker.capabilities
        made_of = self._view_of
        if (
            self._view is not None
            and made_of[0] is caps
            and made_of[1] == order
            and made_of[2] == self.tasks.version
            and made_of[3] is self.held
        ):
            return self._view
        self._view = self._build_view(caps, order)
        self._view_of = (caps, order, self.tasks.version, self.held)
        return self._view

    def _build_view(self, caps: Capabilities, order: int) -> WorkerView:
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
            bridge=caps.bridge,
            artifacts=self.held,
        )

    def cluster_view(self, order: int, epoch: str = "") -> ClusterView | None:
        """The cluster as the root scheduler sees it: its last aggregate, less the tasks
        sent to it after that aggregate was made (``epoch`` is the root process's: an
        aggregate says up to which of this process's commands, ``seq``, it counts)."""
        aggregate = self.aggregate
        if aggregate is None:
            return None
        made_of = (aggregate, self.info, order, self.tasks.version, epoch)
        was = self._cluster_of
        if (
            self._cluster is not None
            and was[0] is aggregate
            and was[1] is self.info
            and was[2:] == made_of[2:]
        ):
            return self._cluster
        info = self.info or ClusterInfo()
        heard = aggregate.seq if aggregate.epoch == epoch else 0
        # (seq None: not sent yet; 0: recovered after a restart, long since counted)
        inflight = [r.booked() for r in self.tasks.values() if r.seq is None or r.seq > heard]
        self._cluster = cluster_view(
            self.worker.id,
            order,
            aggregate,
            labels=info.labels,
            location=info.location,
            spread=self.tasks.spread,
            inflight=inflight,
        )
        self._cluster_of = made_of
        return self._cluster


class Registry:
    """Workers by id, in registration order (the round-robin ring)."""

    def __init__(self) -> None:
        self._entries: dict[str, WorkerEntry] = {}
        #: the manager process's id (``task.start``'s epoch): at the root, an aggregate
        #: counts the commands of this epoch up to its ``seq``
        self.epoch = ""

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
            entry.cluster_view(order, self.epoch)
            for order, entry in enumerate(self._entries.values())
            if entry.takes_tasks
        )
        return [view for view in views if view is not None]

    def spread(self) -> dict[str, dict[str, int]]:
        """Member id → its live tasks per spread group, for the members running any (a
        copy: ``make_plan``'s ``spread``). One pass over the members: a pass asks only
        when a task it places has a group."""
        return {
            entry.worker.id: dict(entry.tasks.spread)
            for entry in self._entries.values()
            if entry.tasks.spread
        }

    def schedulable(self) -> list[WorkerView]:
        return [
            entry.view(order)
            for order, entry in enumerate(self._entries.values())
            if entry.takes_tasks
        ]


def reservation(task: Task, seq: int | None, session: str) -> Reservation:
    """What a task placed on a member holds there."""
    constraints = task.constraints
    return Reservation(
        seq=seq,
        session=session,
        cpu=constraints.cpu or 0.0,
        memory_mb=constraints.memory_mb or 0,
        daemon=task.daemon,
        spread=spread_key(task.project, constraints.spread),
        runtime=task.runtime,
        labels=constraints.labels,
        tee=constraints.tee,
        bridge=needs_bridge(task),
    )
