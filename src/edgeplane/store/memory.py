"""The in-memory store: for tests and throwaway runs; nothing survives the process.

Documents are kept as JSON text, like the SQL store, so every read hands out a fresh
object (mutating it never changes the stored one); parsing JSON is faster than a deep
copy of a pydantic model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgeplane.errors import Conflict
from edgeplane.fl.state import TERMINAL as FL_TERMINAL
from edgeplane.fl.state import Experiment
from edgeplane.model import (
    TERMINAL_STATES,
    TERMINAL_WORKFLOW_STATES,
    Application,
    Schedule,
    Task,
    Worker,
    Workflow,
    task_json,
)
from edgeplane.model.audit import AuditQuery, AuditRecord, matches
from edgeplane.model.listing import Position, in_order
from edgeplane.model.secrets import REVEAL
from edgeplane.store.base import (
    MAX_FL_BLOB_BATCH,
    AuditPrune,
    Batch,
    ChuteVersionRecord,
    Store,
    StoreChuteRecord,
    TokenRecord,
    UserRecord,
    fl_blob_batch,
    fl_blob_fits,
    fl_blob_limit,
    name_taken,
    too_many_versions,
)
from edgeplane.store.leases import Claim, Lease, check_term, claimed, released, renewed


@dataclass(frozen=True)
class _TaskRow:
    """The filter and order keys of a task beside its document."""

    state: str
    job_id: str | None
    workflow_id: str | None
    worker_id: str | None
    name: str
    created_at: float
    id: str
    doc: str
    project: str

    @classmethod
    def of(cls, task: Task, doc: str | None = None) -> _TaskRow:
        """``doc``: its text when already made (``task_json.stored``)."""
        return cls(
            state=task.state,
            job_id=task.job_id,
            workflow_id=task.workflow_id,
            worker_id=task.worker_id,
            name=task.name,
            created_at=task.created_at,
            id=task.id,
            doc=task.model_dump_json(context=REVEAL) if doc is None else doc,
            project=task.project,
        )

    @property
    def order(self) -> tuple[float, str]:
        return (self.created_at, self.id)


@dataclass(frozen=True)
class _WorkflowRow:
    kind: str
    state: str
    created_at: float
    id: str
    doc: str
    project: str

    @classmethod
    def of(cls, workflow: Workflow) -> _WorkflowRow:
        return cls(
            kind=workflow.kind,
            state=workflow.state,
            created_at=workflow.created_at,
            id=workflow.id,
            doc=workflow.model_dump_json(exclude={"tasks"}),
            project=workflow.project,
        )

    @property
    def order(self) -> tuple[float, str]:
        return (self.created_at, self.id)


@dataclass(frozen=True)
class _ScheduleRow:
    created_at: float
    id: str
    doc: str
    project: str

    @classmethod
    def of(cls, schedule: Schedule) -> _ScheduleRow:
        return cls(
            created_at=schedule.created_at,
            id=schedule.id,
            doc=schedule.model_dump_json(context=REVEAL),
            project=schedule.project,
        )

    @property
    def order(self) -> tuple[float, str]:
        return (self.created_at, self.id)


@dataclass(frozen=True)
class _ApplicationRow:
    created_at: float
    id: str
    doc: str

    @classmethod
    def of(cls, app: Application) -> _ApplicationRow:
        return cls(created_at=app.created_at, id=app.id, doc=app.model_dump_json(context=REVEAL))

    @property
    def order(self) -> tuple[float, str]:
        return (self.created_at, self.id)


class MemoryStore(Store):
    """A :class:`Store` in dicts. Methods never await, so each one is atomic."""

    def __init__(self) -> None:
        self._artifacts: dict[str, bytes] = {}
        self._tasks: dict[str, _TaskRow] = {}
        self._workflows: dict[str, _WorkflowRow] = {}
        self._schedules: dict[str, _ScheduleRow] = {}
        self._fl: dict[str, tuple[float, str, str]] = {}
        self._fl_state: dict[str, str] = {}
        self._fl_blobs: dict[str, bytes] = {}
        #: the chute store: name -> (project, created_at); (name, version) -> (record, doc)
        self._store_chutes: dict[str, tuple[str, float]] = {}
        self._chute_versions: dict[tuple[str, str], tuple[ChuteVersionRecord, str]] = {}
        self._applications: dict[str, _ApplicationRow] = {}
        self._workers: dict[str, str] = {}
        self._tokens: dict[str, TokenRecord] = {}
        self._users: dict[str, UserRecord] = {}
        self._leases: dict[str, Lease] = {}
        #: oldest first (records are immutable: reads hand out the same objects)
        self._audit: list[AuditRecord] = []
        self._audit_seq = 0

    async def open(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to release; the data stays until the object is dropped."""

    async def ping(self) -> None:
        """Always answers."""

    async def apply(self, batch: Batch) -> None:
        if self.fenced_by is not None:
            name, term = self.fenced_by
            check_term(self._leases.get(name), name, term)
        for workflow in batch.new_workflows:
            if workflow.id in self._workflows:
                raise Conflict(f"workflow id already exists: {workflow.id}", field="id")
        self._check_new(batch.new_tasks)
        self._workflows.update((w.id, _WorkflowRow.of(w)) for w in batch.new_workflows)
        self._tasks.update((t.id, _TaskRow.of(t, task_json.stored(t))) for t in batch.new_tasks)
        self._tasks.update((t.id, _TaskRow.of(t)) for t in batch.tasks)
        self._workflows.update((w.id, _WorkflowRow.of(w)) for w in batch.workflows)
        self._schedules.update((s.id, _ScheduleRow.of(s)) for s in batch.schedules)
        self._applications.update((a.id, _ApplicationRow.of(a)) for a in batch.applications)
        self._workers.update((w.id, w.model_dump_json()) for w in batch.workers)
        tables: dict[str, dict[str, Any]] = {
            "task": self._tasks,
            "workflow": self._workflows,
            "schedule": self._schedules,
            "application": self._applications,
            "worker": self._workers,
        }
        for kind, doc_id in batch.deleted:
            tables[kind].pop(doc_id, None)
        for record in batch.audit:
            self._audit_seq += 1
            self._audit.append(record.model_copy(update={"id": self._audit_seq}))
        if batch.audit_prune is not None:
            self._prune_audit(batch.audit_prune)

    def _prune_audit(self, prune: AuditPrune) -> None:
        kept = [r for r in self._audit if r.at >= prune.before]
        self._audit = kept[max(0, len(kept) - prune.keep) :]

    # leases

    async def claim_lease(self, name: str, claim: Claim, now: float) -> Lease:
        lease = self._leases[name] = claimed(self._leases.get(name), name, claim, now)
        return lease

    async def renew_lease(
        self, name: str, holder: str, term: int, now: float, ttl_s: float
    ) -> bool:
        lease = renewed(self._leases.get(name), holder, term, now, ttl_s)
        if lease is not None:
            self._leases[name] = lease
        return lease is not None

    async def release_lease(self, name: str, holder: str, term: int) -> None:
        lease = released(self._leases.get(name), holder, term)
        if lease is not None:
            self._leases[name] = lease

    async def get_lease(self, name: str) -> Lease | None:
        return self._leases.get(name)

    # artifacts

    async def put_artifact(self, digest: str, data: bytes) -> None:
        self._artifacts.setdefault(digest, bytes(data))

    async def get_artifact(self, digest: str) -> bytes | None:
        return self._artifacts.get(digest)

    # tasks

    async def add_tasks(self, tasks: Sequence[Task]) -> None:
        self._check_new(tasks)
        self._tasks.update((task.id, _TaskRow.of(task)) for task in tasks)

    def _check_new(self, tasks: Sequence[Task]) -> None:
        """:class:`Conflict` when a task id is stored already or repeated in ``tasks``."""
        seen: set[str] = set()
        taken: set[str] = set()
        for task in tasks:
            if task.id in seen or task.id in self._tasks:
                taken.add(task.id)
            seen.add(task.id)
        if taken:
            raise Conflict(f"task ids already exist: {', '.join(sorted(taken))}", field="id")

    async def save_tasks(self, tasks: Sequence[Task]) -> None:
        self._tasks.update((task.id, _TaskRow.of(task)) for task in tasks)

    async def get_task(self, task_id: str) -> Task | None:
        row = self._tasks.get(task_id)
        return None if row is None else Task.model_validate_json(row.doc)

    async def list_tasks(
        self,
        *,
        state: str | None = None,
        job_id: str | None = None,
        workflow_id: str | None = None,
        worker_id: str | None = None,
        name: str | None = None,
        after: Position | None = None,
        newest_first: bool = False,
        limit: int = 100,
        offset: int = 0,
        projects: Sequence[str] | None = None,
    ) -> tuple[list[Task], int]:
        rows = sorted(
            (
                row
                for row in self._tasks.values()
                if (projects is None or row.project in projects)
                and (state is None or row.state == state)
                and (job_id is None or row.job_id == job_id)
                and (workflow_id is None or row.workflow_id == workflow_id)
                and (worker_id is None or row.worker_id == worker_id)
                and (not name or row.name.startswith(name))
            ),
            key=lambda row: row.order,
            reverse=newest_first,
        )
        total = len(rows)
        if after is not None:
            rows = [row for row in rows if in_order(row.order, after, newest_first)]
        page = rows[offset : offset + limit]
        return [Task.model_validate_json(row.doc) for row in page], total

    async def count_tasks(self, *, projects: Sequence[str] | None = None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self._tasks.values():
            if projects is None or row.project in projects:
                counts[row.state] = counts.get(row.state, 0) + 1
        return counts

    async def delete_task(self, task_id: str) -> bool:
        return self._tasks.pop(task_id, None) is not None

    async def unfinished_tasks(self) -> list[Task]:
        rows = sorted(
            (row for row in self._tasks.values() if row.state not in TERMINAL_STATES),
            key=lambda row: row.order,
        )
        return [Task.model_validate_json(row.doc) for row in rows]

    # workflows and jobs

    async def add_workflow(self, workflow: Workflow, tasks: Sequence[Task]) -> None:
        if workflow.id in self._workflows:
            raise Conflict(f"workflow id already exists: {workflow.id}", field="id")
        self._check_new(tasks)
        self._workflows[workflow.id] = _WorkflowRow.of(workflow)
        self._tasks.update((task.id, _TaskRow.of(task)) for task in tasks)

    async def save_workflows(self, workflows: Sequence[Workflow]) -> None:
        self._workflows.update((w.id, _WorkflowRow.of(w)) for w in workflows)

    async def get_workflow(self, workflow_id: str) -> Workflow | None:
        row = self._workflows.get(workflow_id)
        return None if row is None else Workflow.model_validate_json(row.doc)

    async def list_workflows(
        self,
        *,
        kind: str | None = None,
        limit: int = 100,
        offset: int = 0,
        projects: Sequence[str] | None = None,
    ) -> tuple[list[Workflow], int]:
        rows = sorted(
            (
                row
                for row in self._workflows.values()
                if (kind is None or row.kind == kind)
                and (projects is None or row.project in projects)
            ),
            key=lambda row: row.order,
        )
        page = rows[offset : offset + limit]
        return [Workflow.model_validate_json(row.doc) for row in page], len(rows)

    async def unfinished_workflows(self) -> list[Workflow]:
        rows = sorted(
            (row for row in self._workflows.values() if row.state not in TERMINAL_WORKFLOW_STATES),
            key=lambda row: row.order,
        )
        return [Workflow.model_validate_json(row.doc) for row in rows]

    # schedules

    async def save_schedule(self, schedule: Schedule) -> None:
        self._schedules[schedule.id] = _ScheduleRow.of(schedule)

    async def get_schedule(self, schedule_id: str) -> Schedule | None:
        row = self._schedules.get(schedule_id)
        return None if row is None else Schedule.model_validate_json(row.doc)

    async def list_schedules(
        self, *, limit: int = 100, offset: int = 0, projects: Sequence[str] | None = None
    ) -> tuple[list[Schedule], int]:
        rows = sorted(
            (r for r in self._schedules.values() if projects is None or r.project in projects),
            key=lambda row: row.order,
        )
        page = rows[offset : offset + limit]
        return [Schedule.model_validate_json(row.doc) for row in page], len(rows)

    async def delete_schedule(self, schedule_id: str) -> bool:
        return self._schedules.pop(schedule_id, None) is not None

    # federated learning experiments

    async def save_fl_experiment(
        self, experiment: Experiment, blobs: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        if self.fenced_by is not None:
            name, term = self.fenced_by
            check_term(self._leases.get(name), name, term)
        for digest, data in blobs:
            fl_blob_fits(digest, data)
        for digest, data in blobs:
            await self.put_fl_blob(digest, data)
        self._fl[experiment.id] = (
            experiment.created_at,
            experiment.id,
            experiment.stored_json(),
        )
        self._fl_state[experiment.id] = experiment.state

    async def get_fl_experiment(self, experiment_id: str) -> Experiment | None:
        row = self._fl.get(experiment_id)
        return None if row is None else Experiment.model_validate_json(row[2])

    async def list_fl_experiments(
        self, *, limit: int = 100, offset: int = 0
    ) -> tuple[list[Experiment], int]:
        rows = sorted(self._fl.values())
        page = rows[offset : offset + limit]
        return [Experiment.model_validate_json(row[2]) for row in page], len(rows)

    async def live_fl_experiment_ids(self) -> list[str]:
        return [
            exp_id
            for exp_id in sorted(self._fl, key=self._fl.__getitem__)
            if self._fl_state[exp_id] not in FL_TERMINAL
        ]

    async def put_fl_blob(self, digest: str, data: bytes) -> None:
        fl_blob_fits(digest, data)
        self._fl_blobs.setdefault(digest, bytes(data))

    async def get_fl_blob(self, digest: str) -> bytes | None:
        return self._fl_blobs.get(digest)

    async def missing_fl_blobs(self, digests: Sequence[str]) -> set[str]:
        fl_blob_batch(digests)
        return {d for d in digests if d not in self._fl_blobs}

    async def fl_blob_digests(self, after: str = "", limit: int = MAX_FL_BLOB_BATCH) -> list[str]:
        fl_blob_limit(limit)
        return sorted(d for d in self._fl_blobs if d > after)[:limit]

    async def delete_fl_blobs(self, digests: Sequence[str]) -> int:
        fl_blob_batch(digests)
        if self.fenced_by is not None:
            name, term = self.fenced_by
            check_term(self._leases.get(name), name, term)
        return sum(self._fl_blobs.pop(d, None) is not None for d in set(digests))

    async def delete_fl_experiment(self, experiment_id: str) -> bool:
        self._fl_state.pop(experiment_id, None)
        return self._fl.pop(experiment_id, None) is not None

    # the chute store

    async def publish_chute(
        self, record: ChuteVersionRecord, manifest: str, *, max_versions: int
    ) -> tuple[ChuteVersionRecord, bool]:
        project, _ = self._store_chutes.get(record.name, (record.project, record.published_at))
        if project != record.project:
            raise name_taken(record.name)
        key = (record.name, record.version)
        found = self._chute_versions.get(key)
        if found is not None and not (found[0].deleted and found[0].digest == record.digest):
            return found[0], False
        if len(self._live(record.name)) >= max_versions:
            raise too_many_versions(record.name, max_versions)
        self._store_chutes.setdefault(record.name, (record.project, record.published_at))
        stored = dataclasses.replace(record, deleted=False)
        self._chute_versions[key] = (stored, manifest)
        return stored, True

    def _live(self, name: str) -> tuple[ChuteVersionRecord, ...]:
        return tuple(
            record
            for (owner, _), (record, _doc) in self._chute_versions.items()
            if owner == name and not record.deleted
        )

    async def get_store_chute(self, name: str) -> StoreChuteRecord | None:
        found = self._store_chutes.get(name)
        if found is None:
            return None
        return StoreChuteRecord(name, found[0], found[1], self._live(name))

    async def list_store_chutes(
        self, *, limit: int = 100, offset: int = 0, projects: Sequence[str] | None = None
    ) -> tuple[list[StoreChuteRecord], int]:
        names = sorted(
            name
            for name, (project, _) in self._store_chutes.items()
            if (projects is None or project in projects) and self._live(name)
        )
        page = [await self.get_store_chute(name) for name in names[offset : offset + limit]]
        return [chute for chute in page if chute is not None], len(names)

    async def get_chute_version(
        self, name: str, version: str
    ) -> tuple[ChuteVersionRecord, str] | None:
        found = self._chute_versions.get((name, version))
        return None if found is None or found[0].deleted else found

    async def delete_chute_version(self, name: str, version: str) -> bool:
        found = await self.get_chute_version(name, version)
        if found is None:
            return False
        self._chute_versions[(name, version)] = (dataclasses.replace(found[0], deleted=True), "")
        return True

    # applications

    async def save_application(self, app: Application) -> None:
        self._applications[app.id] = _ApplicationRow.of(app)

    async def get_application(self, app_id: str) -> Application | None:
        row = self._applications.get(app_id)
        return None if row is None else Application.model_validate_json(row.doc)

    async def list_applications(
        self, *, limit: int = 100, offset: int = 0
    ) -> tuple[list[Application], int]:
        rows = sorted(self._applications.values(), key=lambda row: row.order)
        page = rows[offset : offset + limit]
        return [Application.model_validate_json(row.doc) for row in page], len(rows)

    async def delete_application(self, app_id: str) -> bool:
        return self._applications.pop(app_id, None) is not None

    # workers

    async def save_workers(self, workers: Sequence[Worker]) -> None:
        for worker in workers:
            self._workers[worker.id] = worker.model_dump_json()

    async def get_worker(self, worker_id: str) -> Worker | None:
        doc = self._workers.get(worker_id)
        return None if doc is None else Worker.model_validate_json(doc)

    async def list_workers(self, *, limit: int = 100, offset: int = 0) -> tuple[list[Worker], int]:
        ids = sorted(self._workers)
        page = ids[offset : offset + limit]
        return [Worker.model_validate_json(self._workers[i]) for i in page], len(ids)

    async def delete_worker(self, worker_id: str) -> bool:
        return self._workers.pop(worker_id, None) is not None

    # tokens

    async def save_token(self, token: TokenRecord) -> None:
        if any(
            other.secret_hash == token.secret_hash and other.id != token.id
            for other in self._tokens.values()
        ):
            raise Conflict("another token has the same secret", field="secret_hash")
        self._tokens[token.id] = token

    async def find_token(self, secret_hash: str) -> TokenRecord | None:
        return next((t for t in self._tokens.values() if t.secret_hash == secret_hash), None)

    async def delete_token(self, token_id: str) -> bool:
        return self._tokens.pop(token_id, None) is not None

    async def get_token(self, token_id: str) -> TokenRecord | None:
        return self._tokens.get(token_id)

    async def list_tokens(self, *, user: str | None = None) -> list[TokenRecord]:
        found = [t for t in self._tokens.values() if user is None or t.user == user]
        return sorted(found, key=lambda t: (t.created_at, t.id))

    # users

    async def add_user(self, user: UserRecord) -> None:
        if user.name in self._users:
            raise Conflict(f"user {user.name!r} exists", field="name")
        self._users[user.name] = user

    async def get_user(self, name: str) -> UserRecord | None:
        return self._users.get(name)

    async def list_users(self) -> list[UserRecord]:
        return [self._users[name] for name in sorted(self._users)]

    async def delete_user(self, name: str) -> bool:
        self._tokens = {i: t for i, t in self._tokens.items() if t.user != name}
        return self._users.pop(name, None) is not None

    # the audit log

    async def list_audit(self, query: AuditQuery) -> list[AuditRecord]:
        found: list[AuditRecord] = []
        for record in reversed(self._audit):
            if len(found) >= query.limit:
                break
            if matches(record, query):
                found.append(record)
        return found
