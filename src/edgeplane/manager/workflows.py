"""Jobs and workflows: tasks started in dependency order by the pure engine.

A job is a workflow whose dependencies come from its mode (``parallel``: none,
``sequential``: each on the one before). The tracker keeps each unfinished run's graph and
task states in memory, re-evaluates a run when one of its tasks ends (coalescing many ends
into one evaluation) and applies the decision: start, skip, cancel, and the run's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeplane import clock as clocks
from edgeplane.errors import Invalid, NotFound
from edgeplane.manager.facade import Facade
from edgeplane.model import InputRef, Task, TaskSpec, Workflow, WorkflowSpec
from edgeplane.model.workflow import JobSpec, WorkflowKind
from edgeplane.workflows import Node, build_graph, evaluate, resolve_inputs

log = logging.getLogger(__name__)


@dataclass
class _Run:
    workflow: Workflow
    nodes: tuple[Node, ...]
    states: dict[str, str]
    started: set[str]
    #: documents of tasks not started yet (they live only in the store otherwise)
    waiting: dict[str, Task]
    results: dict[str, Any] = field(default_factory=dict)


def _group_update(kind: WorkflowKind, run_id: str) -> dict[str, str | None]:
    return {"job_id": run_id} if kind == "job" else {"workflow_id": run_id}


class Workflows:
    def __init__(self, manager: Facade) -> None:
        self.manager = manager
        self.clock = manager.clock
        self._runs: dict[str, _Run] = {}
        self._task_run: dict[str, str] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._waiters: dict[str, list[asyncio.Future[Workflow]]] = defaultdict(list)
        self._loop: asyncio.Task[None] | None = None
        self._loaded = False
        manager.on_task_end(self._task_ended)

    async def load(self) -> None:
        """Rebuild the unfinished runs. A restarted control plane does this before its
        manager starts: an end committed while a run was being read (a worker's result
        kept while the manager was down) would otherwise reach no run, and the run would
        wait for it for good."""
        if self._loaded:
            return
        self._loaded = True
        for workflow in await self.manager.documents.unfinished_workflows():
            await self._load(workflow)
            self._dirty.add(workflow.id)

    async def start(self) -> None:
        await self.load()
        self._loop = asyncio.create_task(self._run_loop(), name="workflows")
        self._wake.set()

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None

    # ------------------------------------------------------------------ user calls
    async def create(
        self,
        spec: WorkflowSpec,
        kind: WorkflowKind,
        *,
        run_id: str | None = None,
        schedule_id: str | None = None,
    ) -> Workflow:
        """Validate and store a run with all its tasks (one transaction), then start it."""
        run_id = run_id or clocks.new_id()
        ids = [f"{run_id}:{i}" if schedule_id else clocks.new_id() for i in range(len(spec.tasks))]
        mode = spec.mode if isinstance(spec, JobSpec) else "dag"
        nodes = build_graph(
            spec.tasks, ids, mode=mode, max_tasks=self.manager.settings.max_workflow_tasks
        )
        # every task of a run is in the run's project
        update = {"start": False, "schedule": None, "project": spec.project}
        specs = [s.model_copy(update=update) for s in spec.tasks]
        admitted = await self.manager.admit(specs, ids=ids)
        now = self.clock.now()
        tasks = [
            task.model_copy(
                update={
                    **_group_update(kind, run_id),
                    "depends_on": list(node.depends_on),
                    "inputs_from": [InputRef(task=src, index=i) for src, i in node.inputs_from],
                    "run_if": node.run_if,
                    "reason": "waiting for dependencies",
                    "schedule_id": schedule_id,
                }
            )
            for task, node in zip(admitted, nodes, strict=True)
        ]
        workflow = Workflow(
            id=run_id,
            project=spec.project,
            kind=kind,
            name=spec.name,
            mode=mode,
            fail_fast=spec.fail_fast,
            started=spec.start,
            task_ids=ids,
            names={s.name: i for s, i in zip(spec.tasks, ids, strict=True) if s.name},
            schedule_id=schedule_id,
            metadata=spec.metadata,
            created_at=now,
            updated_at=now,
        )
        await self.manager.submit(tasks, workflow=workflow, origin=kind)
        self._track(workflow, nodes, tasks)
        if spec.start:
            await self._advance(run_id)
        return await self.get(run_id, kind)

    async def get(self, run_id: str, kind: WorkflowKind) -> Workflow:
        run = self._runs.get(run_id)
        workflow = run.workflow if run else await self.manager.documents.get_workflow(run_id)
        if workflow is None or workflow.kind != kind:
            raise NotFound(f"{kind} {run_id} not found", field="id")
        # One query for all its tasks (newest in-memory versions win), in request order.
        found, _ = await self.manager.list_tasks(
            job_id=run_id if kind == "job" else None,
            workflow_id=run_id if kind == "workflow" else None,
            limit=len(workflow.task_ids),
        )
        by_id = {task.id: task for task in found}
        tasks = [by_id[task_id] for task_id in workflow.task_ids if task_id in by_id]
        return workflow.model_copy(update={"tasks": tasks})

    async def list(
        self,
        kind: WorkflowKind,
        *,
        limit: int,
        offset: int,
        projects: Sequence[str] | None = None,
    ) -> tuple[list[Workflow], int]:
        items, total = await self.manager.documents.list_workflows(
            kind=kind, limit=limit, offset=offset, projects=projects
        )
        return [self._runs[w.id].workflow if w.id in self._runs else w for w in items], total

    async def wait(self, run_id: str, kind: WorkflowKind, wait_s: float) -> Workflow:
        if wait_s > 0:
            with self.manager.holds.hold():  # Busy past the bound: nothing registered
                future: asyncio.Future[Workflow] = asyncio.get_running_loop().create_future()
                self._waiters[run_id].append(future)
                try:
                    current = await self.get(run_id, kind)
                    if current.terminal:
                        return current
                    with contextlib.suppress(TimeoutError):
                        return await asyncio.wait_for(future, wait_s)
                finally:
                    if future in self._waiters.get(run_id, []):
                        self._waiters[run_id].remove(future)
        return await self.get(run_id, kind)

    async def stop_run(self, run_id: str, kind: WorkflowKind) -> Workflow:
        """Cancel every task still waiting, queued or running; the run ends ``cancelled``."""
        workflow = await self.get(run_id, kind)
        if workflow.terminal:
            return workflow
        run = self._runs.get(run_id)
        if run is not None:
            await self._cancel(run, [n.id for n in run.nodes], "stopped by user")
            await self._set_state(run, "cancelled")
        return await self.get(run_id, kind)

    # ------------------------------------------------------------------ progress
    def _task_ended(self, task: Task) -> None:
        run_id = self._task_run.get(task.id)
        if run_id is None:
            return
        run = self._runs[run_id]
        run.states[task.id] = task.state
        run.waiting.pop(task.id, None)
        if task.state == "completed":
            run.results[task.id] = task.results
        self._dirty.add(run_id)
        self._wake.set()

    async def _run_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            for run_id in dirty:
                try:
                    await self._advance(run_id)
                except Exception:
                    log.exception("advancing a workflow failed", extra={"workflow_id": run_id})

    async def _advance(self, run_id: str) -> None:
        run = self._runs.get(run_id)
        if run is None or not run.workflow.started:
            return
        decision = evaluate(run.nodes, run.states, run.started, fail_fast=run.workflow.fail_fast)
        now = self.clock.now()
        if decision.skip:
            skipped = []
            for task_id in decision.skip:
                doc = await self._take_doc(run, task_id)
                run.states[task_id] = "skipped"
                skipped.append(
                    doc.model_copy(
                        update={
                            "state": "skipped",
                            "reason": "its run_if condition cannot be met",
                            "updated_at": now,
                            "finished_at": now,
                        }
                    )
                )
            self.manager.finish_unstarted(skipped)
        if decision.cancel:
            await self._cancel(run, decision.cancel, "fail-fast: another task failed")
        if decision.start:
            to_start: list[Task] = []
            unusable: list[Task] = []
            by_id = {n.id: n for n in run.nodes}
            for task_id in decision.start:
                doc = await self._take_doc(run, task_id)
                run.started.add(task_id)
                try:
                    extra = resolve_inputs(by_id[task_id], run.results)
                except Invalid as exc:  # e.g. an `always` task reading a failed task
                    run.states[task_id] = "failed"
                    unusable.append(
                        doc.model_copy(
                            update={"state": "failed", "error": exc.detail, "finished_at": now}
                        )
                    )
                    continue
                if extra:
                    doc = doc.model_copy(update={"inputs": [*doc.inputs, *extra]})
                run.states[task_id] = "pending"
                to_start.append(doc)
            self.manager.start_stored(to_start)
            if unusable:
                self.manager.finish_unstarted(unusable)
                self._dirty.add(run.workflow.id)
                self._wake.set()
        await self._set_state(run, decision.state)

    async def _take_doc(self, run: _Run, task_id: str) -> Task:
        """The document of a task about to leave the waiting set."""
        waiting = run.waiting.pop(task_id, None)
        return waiting if waiting is not None else await self.manager.get(task_id)

    async def _cancel(self, run: _Run, task_ids: Sequence[str], reason: str) -> None:
        ended = ("completed", "failed", "skipped", "cancelled")
        targets = [t for t in task_ids if run.states.get(t) not in ended]
        # Mark them all first: stopping one awaits, and its end must not make the
        # engine skip the others meanwhile.
        for task_id in targets:
            run.states[task_id] = "cancelled"
        now = self.clock.now()
        unstarted = []
        for task_id in targets:
            if task_id in run.started:
                await self.manager.stop_task(task_id)
                continue
            doc = await self._take_doc(run, task_id)
            update = {"state": "cancelled", "reason": reason, "updated_at": now, "finished_at": now}
            unstarted.append(doc.model_copy(update=update))
        if unstarted:
            await self.manager.finish_unstarted(unstarted)

    async def _set_state(self, run: _Run, state: str) -> None:
        workflow = run.workflow
        if workflow.state == state:
            return
        now = self.clock.now()
        update: dict[str, Any] = {"state": state, "updated_at": now}
        if state in ("completed", "failed", "cancelled"):
            update["finished_at"] = now
        changed = workflow.model_copy(update=update)
        # Memory follows the store: the run changes once its new state is durable (the
        # journal retries while the store is down, so this waits rather than sticks).
        await self.manager.journal.write(workflows=[changed])
        run.workflow = changed
        if run.workflow.terminal:
            self._forget(run)
            snapshot = await self.get(workflow.id, workflow.kind)
            for future in self._waiters.pop(workflow.id, []):
                if not future.done():
                    future.set_result(snapshot)

    # ------------------------------------------------------------------ memory
    def _track(self, workflow: Workflow, nodes: tuple[Node, ...], tasks: Sequence[Task]) -> None:
        run = _Run(
            workflow=workflow,
            nodes=nodes,
            states={t.id: t.state for t in tasks},
            started={t.id for t in tasks if t.started},
            waiting={t.id: t for t in tasks if not t.started and not t.terminal},
            results={t.id: t.results for t in tasks if t.state == "completed"},
        )
        self._runs[workflow.id] = run
        for task in tasks:
            self._task_run[task.id] = workflow.id

    def _forget(self, run: _Run) -> None:
        self._runs.pop(run.workflow.id, None)
        for node in run.nodes:
            self._task_run.pop(node.id, None)

    async def _load(self, workflow: Workflow) -> None:
        """Rebuild a run after a restart from its stored tasks."""
        tasks = [await self.manager.get(task_id) for task_id in workflow.task_ids]
        specs = [
            TaskSpec(
                name=t.id,
                depends_on=t.depends_on,
                run_if=t.run_if,
                inputs_from=t.inputs_from,
            )
            for t in tasks
        ]
        try:
            nodes = build_graph(specs, workflow.task_ids, mode="dag", max_tasks=len(specs))
        except Invalid as exc:
            log.error(
                "stored workflow is invalid",
                extra={"workflow_id": workflow.id, "error": exc.detail},
            )
            return
        self._track(workflow, nodes, tasks)
