"""The part of the manager that workflows, schedules, the uplink and applications may use.

They submit tasks (one path, with their ``origin`` counted), read and stop them, hear of
commits and ends, read their own documents and write them through the journal, and (the
uplink) see the members' capacity. Nothing else of the manager's inside is theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from edgeplane.fl.state import Experiment
from edgeplane.manager.core import Core
from edgeplane.manager.dispatch import Dispatcher
from edgeplane.manager.tasks import TaskService
from edgeplane.model import Application, Schedule, Task, TaskSpec, Workflow
from edgeplane.model.worker import Capabilities
from edgeplane.protocol import ChuteLogs, ChuteRequest, ChuteResponse, FollowChuteLogs
from edgeplane.scheduling import WorkerView


class DocumentReader(Protocol):
    """The store's reads of the documents the facade's users own."""

    async def unfinished_tasks(self) -> list[Task]: ...
    async def get_workflow(self, workflow_id: str) -> Workflow | None: ...
    async def list_workflows(
        self,
        *,
        kind: str | None = None,
        limit: int = 100,
        offset: int = 0,
        projects: Sequence[str] | None = None,
    ) -> tuple[list[Workflow], int]: ...
    async def unfinished_workflows(self) -> list[Workflow]: ...
    async def get_schedule(self, schedule_id: str) -> Schedule | None: ...
    async def list_schedules(
        self, *, limit: int = 100, offset: int = 0, projects: Sequence[str] | None = None
    ) -> tuple[list[Schedule], int]: ...
    async def list_applications(
        self, *, limit: int = 100, offset: int = 0
    ) -> tuple[list[Application], int]: ...


class ExperimentStore(Protocol):
    """The store's documents and blobs of federated learning (the coordinator's alone)."""

    async def save_fl_experiment(
        self, experiment: Experiment, blobs: Sequence[tuple[str, bytes]] = ()
    ) -> None: ...
    async def get_fl_experiment(self, experiment_id: str) -> Experiment | None: ...
    async def list_fl_experiments(
        self, *, limit: int = 100, offset: int = 0
    ) -> tuple[list[Experiment], int]: ...
    async def live_fl_experiment_ids(self) -> list[str]: ...
    async def put_fl_blob(self, digest: str, data: bytes) -> None: ...
    async def get_fl_blob(self, digest: str) -> bytes | None: ...
    async def missing_fl_blobs(self, digests: Sequence[str]) -> set[str]: ...
    async def fl_blob_digests(self, after: str = "", limit: int = ...) -> list[str]: ...
    async def delete_fl_blobs(self, digests: Sequence[str]) -> int: ...
    async def delete_fl_experiment(self, experiment_id: str) -> bool: ...


class ChuteRelay(Protocol):
    """What the uplink makes of a root's chute calls (``manager/chutes.py``)."""

    async def answer(self, request: ChuteRequest) -> ChuteResponse: ...

    async def relay_logs(
        self, ask: FollowChuteLogs, deliver: Callable[[ChuteLogs], None]
    ) -> None: ...


class Facade:
    def __init__(
        self,
        core: Core,
        tasks: TaskService,
        dispatcher: Dispatcher,
        broker_url: str,
        chutes: ChuteRelay,
    ) -> None:
        self.settings = core.settings
        self.clock = core.clock
        self.broker_url = broker_url
        #: reads of their documents
        self.documents: DocumentReader = core.store
        #: federated learning experiments: written by the coordinator, outside the journal
        #: (a write is still fenced: the store refuses one from a process that lost the lease)
        self.fl_store: ExperimentStore = core.store
        #: writes of their documents (the one commit path)
        self.journal = core.journal
        #: usage samples (the uplink sends the cluster's up to the root)
        self.series = core.series
        #: traces of tasks' paths (None: off)
        self.tracer = core.tracer
        #: answers the API holds open (long polls) and their bound
        self.holds = core.holds
        self.admit = tasks.admit
        self.submit = tasks.submit_tasks
        self.get = tasks.get
        self.list_tasks = tasks.list_tasks
        self.stop_task = tasks.stop_task
        self.finish_unstarted = tasks.finish_unstarted
        self.start_stored = tasks.start_stored
        self.wait_reason = tasks.wait_reason
        self.artifact = dispatcher.artifact
        #: a root's calls for this cluster's workers' chutes (the uplink's)
        self.chutes = chutes
        self._tasks = tasks
        self._registry = core.registry

    async def submit_specs(
        self, specs: Sequence[TaskSpec], *, ids: Sequence[str], origin: str
    ) -> list[Task]:
        """Admit and submit (:meth:`submit` for documents admitted already)."""
        self.journal.check()
        return await self.submit(await self.admit(specs, ids=ids), origin=origin)

    def on_task_end(self, listener: Callable[[Task], None]) -> None:
        """Call ``listener`` with every task whose end is durable."""
        self._tasks.on_task_end.append(listener)

    def on_commit(self, listener: Callable[[list[Task]], None]) -> None:
        """Call ``listener`` with every batch of task versions once it is durable."""
        if listener not in self.journal.listeners:
            self.journal.listeners.append(listener)

    def off_commit(self, listener: Callable[[list[Task]], None]) -> None:
        if listener in self.journal.listeners:
            self.journal.listeners.remove(listener)

    def schedulable(self) -> list[WorkerView]:
        """The members that can take tasks now, as the scheduler sees them."""
        return self._registry.schedulable()

    def spread(self) -> dict[str, dict[str, int]]:
        """Member id → its live tasks per spread group (members running any)."""
        return self._registry.spread()

    def capabilities(self, *, online: bool) -> dict[str, Capabilities]:
        """Every member's capabilities (only the online ones' when ``online``)."""
        return {
            e.worker.id: e.worker.capabilities
            for e in self._registry.entries()
            if e.online or not online
        }
