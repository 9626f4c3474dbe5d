"""The task service: what users (and workflows, schedules, the uplink, applications) do
with tasks — submit, read, wait, start, stop, change, delete — and the members' events
that move tasks along.

Readers see only durable versions (the journal's committed ones, else the store); the
manager's working copies in ``pending`` / ``active`` may be ahead of them and are used
only to decide.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from edgeplane import clock as clocks
from edgeplane.errors import Invalid, NotFound
from edgeplane.manager import lifecycle
from edgeplane.manager.admission import admit_many
from edgeplane.manager.core import Core
from edgeplane.manager.dispatch import Dispatcher
from edgeplane.manager.resolver import Resolver, unresolved
from edgeplane.model import TASK_STATES, Task, TaskPatch, TaskSpec, Workflow
from edgeplane.model.listing import Position
from edgeplane.protocol import FINAL_STATES, StopTasks, TaskEvent

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = logging.getLogger(__name__)


class TaskService:
    def __init__(self, core: Core, dispatcher: Dispatcher) -> None:
        self.core = core
        self._dispatcher = dispatcher
        self._waiters: dict[str, list[asyncio.Future[Task]]] = defaultdict(list)
        #: called (synchronously) with every task whose end has been committed
        self.on_task_end: list[Callable[[Task], None]] = []
        core.resolve = self.resolve
        #: wasm tasks admitted while their registry did not answer (``resolver.py``)
        self.resolver = Resolver(core, dispatcher)
        core.hold = self.resolver.hold

    # ------------------------------------------------------------------ new tasks
    async def admit(
        self, specs: Sequence[TaskSpec], *, batch: bool = True, ids: Sequence[str] | None = None
    ) -> list[Task]:
        """Task documents for valid specs (started when ``start`` is set), not yet stored;
        their modules are stored. :class:`Invalid` names the first bad field."""
        admitted = await admit_many(
            specs,
            ids=ids if ids is not None else [clocks.new_id() for _ in specs],
            now=self.core.clock.now(),
            cluster_id=self.core.level.cluster_id,
            batch=batch,
        )
        for item in admitted:
            digest = item.task.artifact
            if item.artifact is not None and digest and not self._dispatcher.knows_artifact(digest):
                await self.core.store.put_artifact(digest, item.artifact)
                self._dispatcher.remember_artifact(digest, item.artifact)
        return [a.task for a in admitted]

    async def submit(
        self, specs: Sequence[TaskSpec], *, batch: bool = True, ids: Sequence[str] | None = None
    ) -> list[Task]:
        """Validate every spec, store all tasks in one transaction, start those asked to."""
        self.core.journal.check()
        admitting = self.admit(specs, batch=batch, ids=ids)
        tracer = self.core.tracer
        if tracer is None:
            return await self.submit_tasks(await admitting)
        return await self.submit_tasks(await tracer.timed("admission", admitting))

    async def submit_tasks(
        self, tasks: Sequence[Task], *, workflow: Workflow | None = None, origin: str = "api"
    ) -> list[Task]:
        """The one way new tasks come in (the API, workflows, schedules, the uplink,
        applications): admitted documents are stored in one transaction — with their
        workflow run when given —, then the started ones are dispatched or queued.
        :class:`Conflict` (nothing stored) when an id is taken.

        When no task waits, the new ones are placed before they are stored and go in as
        ``scheduled``: one write and no scheduling pass between the request and the
        dispatch (a task's latency path has one commit fewer). Otherwise they queue behind
        the waiting ones.
        """
        core = self.core
        core.journal.check()
        if core.tracer is None:
            return await self._submit(tasks, workflow, origin)
        named = {"edgeplane.origin": origin, "edgeplane.tasks": len(tasks)}
        with core.tracer.span("submit", named):
            return await self._submit(tasks, workflow, origin)

    async def _submit(
        self, tasks: Sequence[Task], workflow: Workflow | None, origin: str
    ) -> list[Task]:
        core, dispatcher = self.core, self._dispatcher
        # (an id the manager already tracks would fail to insert: leave it to the store)
        fresh = [
            t for t in tasks if t.started and self._current(t.id) is None and unresolved(t) is None
        ]
        placed = [] if core.pending else dispatcher.place(fresh)
        stored = {t.id: t for t in tasks} | {t.id: t for _, sent in placed for t in sent}
        dispatcher.save_members(placed)
        try:
            committing = core.journal.settle(core.journal.insert(stored.values(), workflow))
            if core.tracer is None:
                await committing
            else:
                await core.tracer.timed("store commit", committing)
                core.tracer.adopt(stored.values())
        except BaseException:
            dispatcher.unplace(placed)
            raise
        core.stats.submitted[origin] += len(stored)
        self.enqueue(t for t in stored.values() if t.state == "pending")
        await dispatcher.send_batches(placed)
        return list(stored.values())

    def enqueue(self, tasks: Iterable[Task]) -> None:
        """Queue the started ones of stored tasks for scheduling."""
        queued = False
        for task in tasks:
            if task.started and not task.terminal:
                if not self.resolver.hold(task):
                    self.core.pending.put(task)
                queued = True
        if queued:
            self.core.kick.set()

    def finish_unstarted(self, tasks: Sequence[Task]) -> asyncio.Future[None]:
        """Record tasks that end without running (skipped, cancelled in a workflow)."""
        return self.core.journal.write(tasks, then=lambda: self.resolve(tasks))

    def start_stored(self, tasks: Sequence[Task]) -> None:
        """Start tasks that were stored unstarted (a workflow's next step)."""
        started = [lifecycle.start(task, self.core.clock.now()) for task in tasks]
        self.core.journal.write(started)
        self.enqueue(started)

    # ------------------------------------------------------------------ reading
    async def get(self, task_id: str) -> Task:
        """The task as it is stored (never a version that is not durable yet)."""
        task = self.core.journal.committed(task_id)
        if task is None:
            task = await self.core.store.get_task(task_id)
        if task is None:
            raise NotFound(f"task {task_id} not found", field="id")
        return self._with_reason(task)

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
        """A page of stored tasks (``Store.list_tasks``), each in its newest durable version."""
        items, total = await self.core.store.list_tasks(
            state=state,
            job_id=job_id,
            workflow_id=workflow_id,
            worker_id=worker_id,
            name=name,
            after=after,
            newest_first=newest_first,
            limit=limit,
            offset=offset,
            projects=projects,
        )
        return [self._fresher(t) for t in items], total

    async def count_tasks(self, projects: Sequence[str] | None = None) -> dict[str, int]:
        """How many stored tasks are in each state, every state named (0 included)."""
        counts = await self.core.store.count_tasks(projects=projects)
        return {state: counts.get(state, 0) for state in TASK_STATES}

    def wait_reason(self, task_id: str) -> str | None:
        """Why a queued task waits (recomputed every pass, so kept in memory only)."""
        task = self.core.pending.get(task_id)
        return None if task is None else task.reason

    def _with_reason(self, task: Task) -> Task:
        """A stored pending task with the reason it waits now: wait reasons are recomputed
        every scheduling pass and live in memory only (not a change of state)."""
        reason = self.wait_reason(task.id) if task.state == "pending" else None
        if reason is None or reason == task.reason:
            return task
        return task.model_copy(update={"reason": reason})

    def _fresher(self, stored: Task) -> Task:
        """``stored`` or a newer committed version (a store read can lag a commit)."""
        newer = self.core.journal.committed(stored.id)
        task = newer if newer is not None and newer.updated_at >= stored.updated_at else stored
        return self._with_reason(task)

    def _current(self, task_id: str) -> Task | None:
        """The manager's newest version of a task, durable or not (None: the store's)."""
        core = self.core
        return core.pending.get(task_id) or core.active.get(task_id) or core.journal.newest(task_id)

    async def _working(self, task_id: str) -> Task:
        """The manager's newest version of a task, to change it (a user's call)."""
        self.core.journal.check()
        task = self._current(task_id)
        if task is None:
            task = await self.core.store.get_task(task_id)
        if task is None:
            raise NotFound(f"task {task_id} not found", field="id")
        return task

    def task_counts(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for task in (*self.core.pending, *self.core.active.values()):
            counts[task.state] += 1
        return dict(counts)

    async def wait(self, task_id: str, wait_s: float) -> Task:
        """The task once it has ended, or as it is when ``wait_s`` runs out."""
        if wait_s <= 0:
            return await self.get(task_id)
        with self.core.holds.hold():  # Busy past the bound: nothing registered
            # Register before reading: an end that lands while the read awaits the store
            # then still wakes us instead of being missed.
            future: asyncio.Future[Task] = asyncio.get_running_loop().create_future()
            self._waiters[task_id].append(future)
            try:
                task = await self.get(task_id)
                if task.terminal:
                    return task
                return await asyncio.wait_for(future, wait_s)
            except TimeoutError:
                return await self.get(task_id)
            finally:
                waiters = self._waiters.get(task_id)
                if waiters is not None and future in waiters:
                    waiters.remove(future)
                    if not waiters:
                        del self._waiters[task_id]

    # ------------------------------------------------------------------ changing
    async def start_task(self, task_id: str) -> Task:
        task = await self._working(task_id)
        if task.started and not task.terminal:
            return task
        task = lifecycle.start(task, self.core.clock.now())  # Conflict once it has ended
        if not self.resolver.hold(task):
            self.core.pending.put(task)
        written = self.core.journal.write([task])
        self.core.kick.set()
        await self.core.journal.settle(written)
        return task

    async def stop_task(self, task_id: str) -> Task:
        """Cancel a task; a running attempt is told to stop. Stopping an ended task is a no-op."""
        core = self.core
        task = await self._working(task_id)
        if task.terminal:
            return task
        stopped = lifecycle.cancel(task, core.clock.now())
        core.pending.pop(task_id)
        member = core.level.member_of(task)
        if core.active.pop(task_id, None) is not None and member:
            entry = core.registry.get(member)
            if entry is not None:
                entry.tasks.pop(task_id, None)
                await core.send(member, "task.stop", StopTasks(task_ids=[task_id]))
        core.kick.set()
        await core.journal.settle(
            core.journal.write([stopped], then=lambda: self.resolve([stopped]))
        )
        return stopped

    async def retry_task(self, task_id: str) -> Task:
        """A new task running what the ended task ``task_id`` ran (``lifecycle.retry``),
        submitted as any other: the old one stays as it ended."""
        core = self.core
        task = await self._working(task_id)
        copy = lifecycle.retry(task, clocks.new_id(), core.clock.now(), core.level.cluster_id)
        (submitted,) = await self.submit_tasks([copy], origin="retry")
        return submitted

    async def patch_task(self, task_id: str, patch: TaskPatch) -> Task:
        task = await self._working(task_id)
        changes = patch.model_dump(exclude_unset=True)
        if task.secret_env and set(changes.get("env") or ()) & set(task.secret_env):
            raise Invalid("a variable of env is in the task's secret_env already", field="env")
        if "limits" in changes:
            changes["limits"] = patch.limits
        task = lifecycle.patch(task, changes, self.core.clock.now())  # Conflict once started
        await self.core.journal.settle(self.core.journal.write([task]))
        return task

    async def delete_task(self, task_id: str) -> None:
        task = await self._working(task_id)
        if not task.terminal:
            await self.stop_task(task_id)
        await self.core.journal.settle(self.core.journal.delete("task", task_id))

    # ------------------------------------------------------------------ members' events
    async def on_events(self, member_id: str, events: Iterable[TaskEvent]) -> None:
        core = self.core
        now = core.clock.now()
        entry = core.registry.get(member_id)
        changed: dict[str, Task] = {}
        #: the body's keys as plain dicts, not :class:`EventKey` models: the same JSON
        #: on the wire (orjson); building and serialising a model per final event cost
        #: 1.1 us, the dict 0.1 us (microbenchmark, 1,000 keys, min of 40)
        acks: list[dict[str, object]] = []
        late: list[TaskEvent] = []
        resent: list[TaskEvent] = []
        #: versions written again only so the acks wait for them (resolved once already)
        carried: set[str] = set()
        tracer = core.tracer
        #: ``result stored`` spans, ended once the batch is durable (tracing on)
        spans: list[Span] = []
        for event in events:
            core.stats.events += 1
            if event.state in FINAL_STATES:
                if tracer is not None:
                    spans.append(tracer.receiving(event, member_id))
                # Only what the member keeps until acked: an ack names the (task, attempt),
                # so acking a cluster's "scheduled" event dropped the attempt's final event
                # emitted meanwhile, before this manager had stored it (killed then, the
                # result was lost: the cluster's next hello no longer listed the task).
                acks.append({"task_id": event.task_id, "attempt": event.attempt})
            task = core.active.get(event.task_id)
            if task is None and event.state in ("completed", "failed", "cancelled"):
                late.append(event)
            elif task is None and event.state in FINAL_STATES:
                resent.append(event)  # e.g. a "rejected" sent again: pending (or placed) since
            if task is not None and event.attempt < task.attempt:
                continue  # an earlier attempt's event, sent again: that attempt is over
            if task is not None and core.level.member_of(task) != member_id:
                # Another member's task: a forged or misrouted event (the broker's ACL lets
                # a member publish only on its own topics, so this names the sender).
                core.stats.foreign_events += 1
                log.warning(
                    "event refused: the task is another member's",
                    extra={"member": member_id, "task_id": task.id},
                )
                continue
            if task is None:
                continue
            new = lifecycle.apply_event(task, event, now, core.settings.retry_backoff_s)
            if new is None:
                continue
            changed[new.id] = new
            if new.state in ("scheduled", "running"):
                core.active[new.id] = new
                continue
            del core.active[new.id]
            if entry is not None:
                entry.tasks.pop(new.id, None)
            if new.state == "pending":
                core.pending.put(new)
        for event in late:
            truth = await self._late_end(member_id, event, now)
            if truth is not None:
                changed[truth.id] = truth
                continue
            # A resent end of a task whose end is not durable yet (its write is queued or
            # in flight): the ack must wait for that write, so this batch carries the same
            # version again. Acked at once, the member would forget a result that a failed
            # write (an outage, a fenced ex-leader) then loses.
            resent.append(event)
        for event in resent:
            unwritten = core.journal.unwritten(event.task_id)
            if unwritten is not None and unwritten.id not in changed:
                changed[unwritten.id] = unwritten
                carried.add(unwritten.id)
        if changed:
            core.kick.set()

        async def after() -> None:
            # Only once the results are durable may the member forget them.
            self.resolve(t for t in changed.values() if t.id not in carried)
            if tracer is not None:
                tracer.stored(spans, changed.values())
            if acks:
                # QoS 0: a lost ack costs one resend of the events, which are acked again
                # (duplicates are ignored); QoS 1 would cost a PUBACK each way per batch.
                await core.send(member_id, "task.ack", {"keys": acks}, qos=0)

        core.journal.write(changed.values(), then=after)

    async def _late_end(self, member_id: str, event: TaskEvent, now: float) -> Task | None:
        """See :func:`lifecycle.late_end` (most such events are resent duplicates of ends
        already recorded: those are answered from memory, without a store read)."""
        task = self._current(event.task_id)
        if task is None:
            task = await self.core.store.get_task(event.task_id)
        if task is None or self.core.level.member_of(task) != member_id:
            return None
        truth = lifecycle.late_end(task, event, now)
        if truth is not None:
            log.info(
                "a lost task's real end reported",
                extra={"task_id": truth.id, "state": truth.state, "member": member_id},
            )
        return truth

    def resolve(self, tasks: Iterable[Task]) -> None:
        """A task's end is durable: wake its waiters and tell the listeners (workflows)."""
        # (attributes looked up once per call, not per task, and no empty list per task
        # for the waiters nobody registered: with Journal._round's shortcut, a round of
        # 1,000 task ends took 3.4 -> 2.5 us per task, store excluded; microbenchmark)
        stats, waiters, listeners = self.core.stats, self._waiters, self.on_task_end
        finished, observe = stats.finished, stats.end_to_end.observe
        for task in tasks:
            if task.terminal:
                finished[task.state] += 1
                if task.finished_at is not None and task.created_at:
                    observe(max(0.0, task.finished_at - task.created_at))
                for future in waiters.pop(task.id, ()):
                    if not future.done():
                        future.set_result(task)
                for listener in listeners:
                    listener(task)

    def cancel_waiters(self) -> None:
        for futures in self._waiters.values():
            for future in futures:
                future.cancel()
