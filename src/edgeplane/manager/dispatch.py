"""Scheduling passes and dispatch, Nomad's eval → plan → apply:

- *eval*: a pass takes the due pending tasks and the members' views (``PendingQueue``,
  the level's ``views``);
- *plan*: the level plans, purely (``make_plan`` over workers, ``place_on_clusters`` over
  cluster aggregates);
- *apply*: each placement becomes the task's new version and a reservation on its member,
  written through the journal; only once that committed does ``task.start`` leave.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections import defaultdict
from dataclasses import replace
from typing import Any

from edgeplane.manager import lifecycle
from edgeplane.manager.core import Core
from edgeplane.manager.queue import demand_of
from edgeplane.manager.registry import WorkerEntry, reservation
from edgeplane.model import Task
from edgeplane.protocol import (
    Assignment,
    StartTasks,
    sealing,
    start_tasks_body,
    worker_assignment,
)
from edgeplane.scheduling import Plan, TaskDemand, WorkerView

log = logging.getLogger(__name__)

#: Tasks given to one member, to go in one ``task.start``.
Batch = tuple[WorkerEntry, list[Task]]
_ARTIFACT_CACHE = 64
#: Seconds a scheduling pass waits after being woken, to gather more changes.
SCHEDULE_WINDOW_S = 0.001
#: A pass placing this many tasks means more are coming: the next one waits the window.
BUSY_PASS = 8


class Dispatcher:
    def __init__(self, core: Core, epoch: str) -> None:
        self.core = core
        #: this manager process's id; task.start sequence numbers count within it
        self._epoch = epoch
        self._next_due: float | None = None
        self._busy = False
        self._cursor = 0
        self._artifacts: dict[str, bytes] = {}
        #: start commands carry a module's bytes (base64, once per member session);
        #: False once an artifact proxy serves this cluster's workers: they carry its
        #: digest only, and a worker lacking it fetches it (``artifacts/proxy.py``)
        self.inline_artifacts = True
        #: held while a command is built and queued: commands go out in seq order
        self._sending = asyncio.Lock()
        #: members told secret env in the clear (warned once each)
        self._unsealed: set[str] = set()

    # ------------------------------------------------------------------ passes
    async def schedule_loop(self) -> None:
        kick = self.core.kick
        while True:
            timeout = self._next_due_in()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(kick.wait(), timeout)
            # Under load, let the events arriving together free their slots before one
            # pass places tasks on all of them (bigger task.start batches, fewer commits).
            # When the last pass was small, waiting only adds latency: just yield once.
            await asyncio.sleep(SCHEDULE_WINDOW_S if self._busy else 0)
            kick.clear()
            try:
                await self.schedule_once()
            except Exception:
                log.exception("scheduling pass failed")
                await asyncio.sleep(0.5)

    def _next_due_in(self) -> float | None:
        if self._next_due is None:
            return None
        return max(0.01, self._next_due - self.core.clock.now())

    async def schedule_once(self) -> None:
        core = self.core
        now = core.clock.now()
        if not core.pending:
            # Nothing waits: do not build the member views (10,000 workers saying hello
            # would otherwise cost a pass over all of them each).
            self._next_due = None
            return
        views = core.level.views(core.registry)
        candidates = core.pending.candidates(now, core.level.window(views))
        self._next_due = candidates.next_due
        due = candidates.due
        if not due:
            return
        plan = self._plan([core.pending.demand(t) for t in due], views)
        for task_id, reason in plan.waiting.items():
            # Wait reasons are recomputed every pass; they live in memory only.
            task = core.pending.get(task_id)
            if task is not None and task.reason != reason:
                core.pending.put(lifecycle.wait_reason(task, reason, now))
        self._busy = len(plan.assignments) >= BUSY_PASS
        chosen = [
            (waiting, member_id)
            for task_id, member_id in plan.assignments
            if (waiting := core.pending.pop(task_id)) is not None
        ]
        if not chosen:
            return
        batches = self._assign(chosen, now)

        async def dispatch() -> None:
            await self.send_batches(batches)

        self.save_members(batches)
        core.journal.write([t for _, tasks in batches for t in tasks], then=dispatch)

    def place(self, tasks: list[Task]) -> list[Batch]:
        """Place new tasks (not yet stored) at once where they fit now (the task service's
        submit, when nothing waits: they are then stored ``scheduled``)."""
        if not tasks:
            return []
        plan = self._plan([demand_of(t) for t in tasks], self.core.level.views(self.core.registry))
        by_id = {t.id: t for t in tasks}
        chosen = [(by_id[i], member) for i, member in plan.assignments]
        return self._assign(chosen, self.core.clock.now())

    def _plan(self, demands: list[TaskDemand], views: list[WorkerView]) -> Plan:
        plan = self.core.level.plan(demands, views, self.core.registry, self._cursor)
        self._cursor = plan.cursor
        return plan

    def _assign(self, chosen: list[tuple[Task, str]], now: float) -> list[Batch]:
        """Give each task to its member: the task's new version, tracked as active, and a
        reservation on the member; one batch (one ``task.start``) per member."""
        core = self.core
        by_member: dict[str, list[Task]] = defaultdict(list)
        for waiting, member_id in chosen:
            task = core.level.assign(waiting, member_id, now)
            core.active[task.id] = task
            by_member[member_id].append(task)
        batches = []
        for member_id, tasks in by_member.items():
            entry = core.registry.get(member_id)
            if entry is not None:
                for task in tasks:
                    entry.tasks[task.id] = reservation(task, seq=None, session="")
                batches.append((entry, tasks))
        return batches

    def unplace(self, batches: list[Batch]) -> None:
        """Undo :meth:`place` for tasks whose insert failed: they never existed (their
        ids were new to the manager, so nothing else is tracked under them)."""
        for entry, tasks in batches:
            for task in tasks:
                del self.core.active[task.id]
                entry.tasks.pop(task.id, None)

    def save_members(self, batches: list[Batch]) -> None:
        """Queue the unsaved documents of members about to get tasks ahead of those tasks'
        write, so they commit with it or before: a restarted manager must know where its
        tasks went. (Not awaited: dispatches run inside the journal's callbacks.)"""
        unsaved = self.core.unsaved
        members = [unsaved.pop(e.worker.id) for e, _ in batches if e.worker.id in unsaved]
        if members:
            self.core.journal.write(workers=members)

    # ------------------------------------------------------------------ sending
    async def send_batches(self, batches: list[Batch]) -> None:
        """Dispatch tasks already recorded as scheduled (their members stored too).

        Commands reach a member in ``seq`` order, one at a time: it reports the highest
        ``seq`` it has seen, and a task sent with a lower one that it does not report is
        taken as lost; an artifact goes inline only in the first command that needs it.
        Placements made apart (a submit placing at once, a scheduling pass) may be ready
        in either order, so each command takes its seq when it is built, under the lock.
        """
        async with self._sending:
            for entry, tasks in batches:
                await self._dispatch(entry, tasks)

    async def _dispatch(self, entry: WorkerEntry, tasks: list[Task]) -> None:
        """One ``task.start``, with its seq taken now (see :meth:`send_batches`)."""
        core = self.core
        tracer = core.tracer
        # A worker's assignments (no trace context to add) go straight from the tasks to
        # their wire form (``worker_assignment``): building and encoding the models cost
        # 9.9 ms per 1,000 no-op tasks in commands of 8, the direct form 1.9 (min of 40).
        cluster = core.level.member == "cluster"
        direct = not cluster and tracer is None
        assignments: list[Assignment] = []
        bodies: list[dict[str, Any]] = []
        for task in tasks:
            inline = None
            if (
                self.inline_artifacts
                and task.artifact is not None
                and task.artifact not in entry.artifacts
            ):
                data = await self.artifact(task.artifact)
                inline = None if data is None else await _base64(data)
                entry.artifacts.add(task.artifact)
            secrets = self._secrets(entry, task) if task.secret_env else None
            if direct:
                bodies.append(worker_assignment(task, artifact_b64=inline, secrets=secrets))
            else:
                assignments.append(
                    Assignment.of(task, artifact_b64=inline, for_cluster=cluster, secrets=secrets)
                )
        core.stats.dispatched += len(tasks)
        now = core.clock.now()
        observe = core.stats.dispatch_latency.observe
        for task in tasks:
            observe(max(0.0, now - max(task.created_at, task.not_before)))
        entry.sent_seq += 1
        seq = entry.sent_seq
        for task in tasks:
            held = entry.tasks.get(task.id)
            if held is not None and held.seq is None:
                entry.tasks[task.id] = replace(held, seq=seq, session=entry.session)
        if direct:
            body = start_tasks_body(bodies, epoch=self._epoch, seq=seq, session=entry.session)
            await core.send(entry.worker.id, "task.start", body)
            return
        spans = None if tracer is None else tracer.dispatching(tasks, assignments, entry.worker.id)
        start = StartTasks(tasks=assignments, epoch=self._epoch, seq=seq, session=entry.session)
        await core.send(entry.worker.id, "task.start", start)
        if spans is not None:
            for span in spans:
                span.end()

    def _secrets(self, entry: WorkerEntry, task: Task) -> dict[str, object]:
        """The task's secret env for its member: sealed to it when it has a key, else in
        the clear (said once per member in a warning: the broker is all that protects it)."""
        member_id = entry.worker.id
        key = self.core.sealing_key(member_id)
        if key is None:
            if member_id not in self._unsealed:
                self._unsealed.add(member_id)
                log.warning(
                    "secret env sent to a %s in the clear: it has no key on this broker "
                    "(an external broker's ACL and TLS are all that protect it; "
                    "docs/security.md, Secrets)",
                    self.core.member,
                    extra={"member": member_id},
                )
            return {"secret_env": task.secret_env}
        sealed = sealing.seal(
            key, task.secret_env, task_id=task.id, attempt=task.attempt, member_id=member_id
        )
        return {"sealed_env": sealed}

    # ------------------------------------------------------------------ artifacts
    async def artifact(self, digest: str) -> bytes | None:
        data = self._artifacts.get(digest)
        if data is None:
            data = await self.core.store.get_artifact(digest)
            if data is not None:
                self.remember_artifact(digest, data)
        return data

    def knows_artifact(self, digest: str) -> bool:
        return digest in self._artifacts

    def remember_artifact(self, digest: str, data: bytes) -> None:
        if len(self._artifacts) >= _ARTIFACT_CACHE:
            self._artifacts.pop(next(iter(self._artifacts)))
        self._artifacts[digest] = data


#: A module of at most this many bytes is base64-encoded on the event loop (tens of µs);
#: a bigger one (up to the API's body limit) in a thread.
_INLINE_ENCODE_BYTES = 48 * 1024


async def _base64(data: bytes) -> str:
    if len(data) <= _INLINE_ENCODE_BYTES:
        return base64.b64encode(data).decode()
    return (await asyncio.to_thread(base64.b64encode, data)).decode()
