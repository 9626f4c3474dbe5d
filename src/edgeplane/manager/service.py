"""The manager: task lifecycle, dispatch over MQTT, liveness, waiting for results.

One class serves both levels of the hierarchy. A cluster's manager dispatches to its
workers; the root (``root=True``) dispatches to clusters, which report like workers do
(hello, alive, task events) plus an aggregate of their capacity, and may reject a task.
At the root a task's ``cluster_id`` says where it was placed and ``worker_id`` is what the
cluster reported; at a cluster ``worker_id`` is the member.

State lives in two places on purpose: the store is the truth that survives a crash, and
``_pending`` / ``_active`` hold the started, unfinished tasks in memory so the hot path
(schedule → dispatch → event) never reads the store. Every transition is written to the
store before anything depends on it (a dispatch, an ack to a worker, a reply to a user).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from pydantic import BaseModel

from edgeplane import clock as clocks
from edgeplane.config import Settings
from edgeplane.errors import Conflict, Invalid, NotFound
from edgeplane.manager import grace, lifecycle
from edgeplane.manager.admission import admit_many
from edgeplane.manager.journal import Journal
from edgeplane.manager.queue import PendingQueue, demand_of
from edgeplane.manager.registry import Registry, Reservation, WorkerEntry
from edgeplane.model import Aggregate, Task, TaskPatch, TaskSpec, Worker
from edgeplane.protocol import (
    AckEvents,
    Alive,
    Assignment,
    EventKey,
    Hello,
    Reregister,
    StartTasks,
    StopTasks,
    TaskEvent,
    TaskEvents,
    Topics,
    Welcome,
    decode,
    encode,
    parse_body,
)
from edgeplane.scheduling import Plan, TaskDemand, WorkerView, make_plan
from edgeplane.scheduling.placement import place_on_clusters
from edgeplane.store import Store
from edgeplane.transport import MqttLink

log = logging.getLogger(__name__)

#: How many pending tasks one scheduling pass looks at, per free slot.
_CANDIDATES_PER_SLOT = 4
#: Tasks given to one member, to go in one ``task.start``.
_Batch = tuple[WorkerEntry, list[Task]]
_ARTIFACT_CACHE = 64
#: Seconds a scheduling pass waits after being woken, to gather more changes.
SCHEDULE_WINDOW_S = 0.001
#: A pass placing this many tasks means more are coming: the next one waits the window.
BUSY_PASS = 8
#: Seconds member documents wait to be stored together.
PERSIST_WINDOW_S = 0.2


@dataclass
class ManagerStats:
    bad_messages: int = 0
    dispatched: int = 0
    events: int = 0
    lost_workers: int = 0
    #: tasks that ended since the manager started, by final state
    finished: Counter[str] = field(default_factory=Counter)


class Manager:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        broker_url: str,
        *,
        clock: clocks.Clock | None = None,
        root: bool = False,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock: clocks.Clock = clock or clocks.SystemClock()
        self.root = root
        self.broker_url = broker_url
        self.member = "cluster" if root else "worker"
        self.topics = (
            Topics.for_root(settings.domain)
            if root
            else Topics(settings.domain, settings.cluster_id)
        )
        self.stats = ManagerStats()
        self.registry = Registry()
        self.journal = Journal(store)
        #: lost members whose re-attachable tasks wait for them (see grace.py)
        self.grace = grace.Grace(grace.grace_s(settings), enabled=not root, member=self.member)
        self._pending = PendingQueue()
        self._next_due: float | None = None
        self._busy = False
        self._active: dict[str, Task] = {}
        self._waiters: dict[str, list[asyncio.Future[Task]]] = defaultdict(list)
        #: called (synchronously) with every task whose end has been committed
        self.on_task_end: list[Callable[[Task], None]] = []
        self._artifacts: dict[str, bytes] = {}
        self._cursor = 0
        self._kick = asyncio.Event()
        #: member documents waiting to be stored (see :meth:`_persist`)
        self._unsaved: dict[str, Worker] = {}
        #: held while a command is built and queued: commands go out in seq order
        self._sending = asyncio.Lock()
        self._save_wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        #: this manager process's id; task.start sequence numbers count within it
        self._epoch = clocks.new_id()
        leaves = ("hello", "alive", "events", "aggregate") if root else ("hello", "alive", "events")
        self.link = MqttLink(
            broker_url,
            client_id=(
                f"edgeplane-root-{settings.domain}"
                if root
                else f"edgeplane-manager-{settings.domain}-{settings.cluster_id}"
            ),
            subscriptions=[self.topics.all_members(leaf) for leaf in leaves],
            on_message=self._on_message,
            clean_session=False,
        )

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self._recover()
        await self.link.start()
        self._loops = [
            asyncio.create_task(self._schedule_loop(), name="manager-schedule"),
            asyncio.create_task(self._liveness_loop(), name="manager-liveness"),
            asyncio.create_task(self.journal.run(), name="manager-journal"),
            asyncio.create_task(self._persist_loop(), name="manager-workers"),
        ]
        self._kick.set()

    async def stop(self) -> None:
        await self.journal.commit()
        await self._flush_workers()
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        self._loops = []
        await self.link.stop()
        for futures in self._waiters.values():
            for future in futures:
                future.cancel()

    async def _recover(self) -> None:
        """Rebuild memory after a restart: known workers, unfinished started tasks."""
        workers, _ = await self.store.list_workers(limit=1_000_000)
        now = self.clock.monotonic()
        for worker in workers:
            # Until a worker speaks again its liveness clock starts now.
            self.registry.add(WorkerEntry(worker=worker, last_seen=now))
        for task in await self.store.unfinished_tasks():
            if not task.started:
                continue
            entry = self.registry.get(self._member_of(task) or "")
            if task.state in ("scheduled", "running") and entry is not None:
                self._active[task.id] = task
                entry.tasks[task.id] = self._reservation(task, seq=0, session="")
            elif task.state in ("scheduled", "running"):
                self._pending.put(
                    lifecycle.lose(
                        task, f"its {self.member} is unknown after a restart", self.clock.now(), 0.0
                    )
                )
            else:
                self._pending.put(task)
        if self._pending or self._active:
            log.info(
                "recovered tasks",
                extra={"pending": len(self._pending), "active": len(self._active)},
            )

    # ------------------------------------------------------------------ user calls
    async def submit(
        self, specs: Sequence[TaskSpec], *, batch: bool = True, ids: Sequence[str] | None = None
    ) -> list[Task]:
        """Validate every spec, store all tasks in one transaction, start those asked to.

        When no task waits, the new ones are placed before they are stored and go in as
        ``scheduled``: one write and no scheduling pass between the request and the
        dispatch (a task's latency path has one commit fewer). Otherwise they queue behind
        the waiting ones.
        """
        tasks = await self.admit(specs, batch=batch, ids=ids)
        # (an id the manager already tracks would fail to insert: leave it to the store)
        fresh = [t for t in tasks if t.started and self.live(t.id) is None]
        placed = [] if self._pending else self._place(fresh)
        stored = {t.id: t for t in tasks} | {t.id: t for _, sent in placed for t in sent}
        try:
            await self.store.add_tasks(list(stored.values()))
        except BaseException:
            self._unplace(placed)
            raise
        self.enqueue(t for t in stored.values() if t.state == "pending")
        await self._send_batches(placed)
        return list(stored.values())

    async def admit(
        self, specs: Sequence[TaskSpec], *, batch: bool = True, ids: Sequence[str] | None = None
    ) -> list[Task]:
        """Task documents for valid specs (started when ``start`` is set), not yet stored;
        their modules are stored. :class:`Invalid` names the first bad field."""
        now = self.clock.now()
        admitted = admit_many(
            specs,
            ids=ids if ids is not None else [clocks.new_id() for _ in specs],
            now=now,
            cluster_id=None if self.root else self.settings.cluster_id,
            batch=batch,
        )
        for item in admitted:
            if item.artifact is not None and item.task.artifact not in self._artifacts:
                await self.store.put_artifact(item.task.artifact or "", item.artifact)
                self._remember_artifact(item.task.artifact or "", item.artifact)
        return [a.task for a in admitted]

    def enqueue(self, tasks: Iterable[Task]) -> None:
        """Queue the started ones of stored tasks for scheduling."""
        queued = False
        for task in tasks:
            if task.started and not task.terminal:
                self._pending.put(task)
                queued = True
        if queued:
            self._kick.set()

    def finish_unstarted(self, tasks: Sequence[Task]) -> asyncio.Future[None]:
        """Record tasks that end without running (skipped, cancelled in a workflow)."""
        return self.journal.write(tasks, then=lambda: self._resolve(tasks))

    def start_stored(self, tasks: Sequence[Task]) -> None:
        """Start tasks that were stored unstarted (a workflow's next step)."""
        started = [lifecycle.start(task, self.clock.now()) for task in tasks]
        self.journal.write(started)
        self.enqueue(started)

    async def get(self, task_id: str) -> Task:
        task = self.live(task_id)
        if task is None:
            task = await self.store.get_task(task_id)
        if task is None:
            raise NotFound(f"task {task_id} not found", field="id")
        return task

    async def list_tasks(
        self,
        *,
        state: str | None = None,
        job_id: str | None = None,
        workflow_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[Task], int]:
        items, total = await self.store.list_tasks(
            state=state, job_id=job_id, workflow_id=workflow_id, limit=limit, offset=offset
        )
        return [self._fresher(t) for t in items], total

    async def start_task(self, task_id: str) -> Task:
        task = await self.get(task_id)
        if task.started:
            if task.terminal:
                raise Conflict(f"task {task_id} already ended ({task.state})", field="id")
            return task
        task = lifecycle.start(task, self.clock.now())
        self._pending.put(task)
        await self.journal.write([task])
        self._kick.set()
        return task

    async def stop_task(self, task_id: str) -> Task:
        """Cancel a task; a running attempt is told to stop. Stopping an ended task is a no-op."""
        task = await self.get(task_id)
        if task.terminal:
            return task
        now = self.clock.now()
        stopped = lifecycle.cancel(task, now)
        self._pending.pop(task_id)
        member = self._member_of(task)
        if self._active.pop(task_id, None) is not None and member:
            entry = self.registry.get(member)
            if entry is not None:
                entry.tasks.pop(task_id, None)
                await self._send(member, "task.stop", StopTasks(task_ids=[task_id]))
        self._kick.set()
        await self.journal.write([stopped], then=lambda: self._resolve([stopped]))
        return stopped

    async def patch_task(self, task_id: str, patch: TaskPatch) -> Task:
        task = await self.get(task_id)
        if task.started:
            raise Conflict(f"task {task_id} has started; only new tasks can change", field="id")
        changes = patch.model_dump(exclude_unset=True)
        if "limits" in changes:
            changes["limits"] = patch.limits
        task = task.model_copy(update={**changes, "updated_at": self.clock.now()})
        await self.journal.write([task])
        return task

    async def delete_task(self, task_id: str) -> None:
        task = await self.get(task_id)
        if not task.terminal:
            await self.stop_task(task_id)
        await self.journal.commit()
        await self.store.delete_task(task_id)
        self.journal.forget(task_id)

    async def wait(self, task_id: str, wait_s: float) -> Task:
        """The task once it has ended, or as it is when ``wait_s`` runs out."""
        if wait_s <= 0:
            return await self.get(task_id)
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

    def _member_of(self, task: Task) -> str | None:
        """The member a task was sent to: its cluster at the root, else its worker."""
        return task.cluster_id if self.root else task.worker_id

    def live(self, task_id: str) -> Task | None:
        """The manager's newest version of a task (None: the store's is the newest)."""
        return (
            self._pending.get(task_id) or self._active.get(task_id) or self.journal.newest(task_id)
        )

    def _fresher(self, stored: Task) -> Task:
        """``stored`` or a newer version the manager holds (a store read can lag a commit)."""
        live = self.live(stored.id)
        return live if live is not None and live.updated_at >= stored.updated_at else stored

    def task_counts(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for task in (*self._pending, *self._active.values()):
            counts[task.state] += 1
        return dict(counts)

    # workers
    def workers(self) -> list[Worker]:
        return [self._worker_doc(entry) for entry in self.registry.entries()]

    def worker(self, worker_id: str) -> Worker:
        entry = self.registry.get(worker_id)
        if entry is None:
            raise NotFound(f"worker {worker_id} not found", field="id")
        return self._worker_doc(entry)

    async def drain_worker(self, worker_id: str) -> Worker:
        """No new tasks go to a draining worker; its running tasks finish."""
        entry = self.registry.get(worker_id)
        if entry is None:
            raise NotFound(f"worker {worker_id} not found", field="id")
        entry.draining = True
        if entry.online:
            entry.worker = entry.worker.model_copy(update={"state": "draining"})
        await self.store.save_workers([entry.worker])
        return self._worker_doc(entry)

    async def delete_worker(self, worker_id: str) -> None:
        entry = self.registry.remove(worker_id)
        if entry is None:
            raise NotFound(f"worker {worker_id} not found", field="id")
        await self._lose_tasks(entry, f"worker {worker_id} was deleted")
        await self.store.delete_worker(worker_id)

    @staticmethod
    def _worker_doc(entry: WorkerEntry) -> Worker:
        return entry.worker.model_copy(update={"active_tasks": len(entry.tasks)})

    # ------------------------------------------------------------------ messages
    async def _on_message(self, topic: str, payload: bytes) -> None:
        where = self.topics.member_of(topic)
        try:
            if where is None:
                raise Invalid(f"unexpected topic {topic}", field="topic")
            envelope = decode(payload)
            body = parse_body(envelope.type, envelope.body)
        except Invalid as exc:
            self.stats.bad_messages += 1
            log.warning("bad message", extra={"topic": topic, "error": exc.detail})
            return
        worker_id = where[0]
        entry = self.registry.get(worker_id)
        if entry is not None and entry.online:
            entry.last_seen = self.clock.monotonic()  # any message is a sign of life
        if isinstance(body, Hello):
            await self._on_hello(worker_id, body)
        elif isinstance(body, Alive):
            await self._on_alive(worker_id, body)
        elif isinstance(body, TaskEvents):
            await self._on_events(worker_id, body.events)
        elif isinstance(body, Aggregate) and self.root:
            self._on_aggregate(worker_id, body)
        else:
            self.stats.bad_messages += 1
            log.warning("unexpected message", extra={"topic": topic, "type": envelope.type})

    async def _on_hello(self, worker_id: str, hello: Hello) -> None:
        now, mono = self.clock.now(), self.clock.monotonic()
        entry = self.registry.get(worker_id)
        if entry is None:
            entry = WorkerEntry(
                worker=Worker(
                    id=worker_id,
                    cluster_id=worker_id if self.root else self.settings.cluster_id,
                    capabilities=hello.capabilities,
                    registered_at=now,
                )
            )
            self.registry.add(entry)
            log.info(f"{self.member} registered", extra={f"{self.member}_id": worker_id})
        if hello.cluster is not None:
            entry.info = hello.cluster
        if hello.aggregate is not None:
            entry.aggregate = hello.aggregate
        if entry.session != hello.session:
            # A session we did not know: tasks it does not report are gone if they went to
            # an older process, or if this process has seen the command that carried them.
            active = set(hello.active)
            received = hello.seq if hello.epoch == self._epoch else 0

            def gone(r: Reservation) -> bool:
                if r.seq is None:  # not sent yet: it goes to this session
                    return False
                if r.seq == 0:  # recovered after our restart: the worker is authoritative
                    return True
                if r.session and r.session != hello.session:
                    return True
                return r.seq <= received

            lost = [tid for tid, r in entry.tasks.items() if tid not in active and gone(r)]
            await self._lose_tasks(entry, f"{self.member} {worker_id} restarted", only=lost)
            entry.artifacts.clear()
            # Tasks it still runs that are no longer its own (lost while it was away and
            # placed elsewhere, or stopped): stop them, so no duplicate keeps running.
            surplus = [tid for tid in hello.active if tid not in entry.tasks]
            if surplus:
                log.info(
                    "stopping surplus tasks",
                    extra={f"{self.member}_id": worker_id, "count": len(surplus)},
                )
                await self._send(worker_id, "task.stop", StopTasks(task_ids=surplus))
        entry.session = hello.session
        entry.last_seen = mono
        entry.worker = entry.worker.model_copy(
            update={
                "capabilities": hello.capabilities,
                "state": "draining" if entry.draining else "online",
                "last_seen": now,
            }
        )
        self._persist(entry.worker)
        await self._send(
            worker_id,
            "welcome",
            Welcome(
                worker_id=worker_id,
                session=hello.session,
                heartbeat_s=self.settings.heartbeat_s,
                broker_url=self.broker_url,
            ),
            topic=self.topics.welcome(worker_id),
        )
        self._kick.set()

    def _on_aggregate(self, cluster_id: str, aggregate: Aggregate) -> None:
        entry = self.registry.get(cluster_id)
        if entry is None or not entry.online:
            return  # an aggregate before hello, or from a cluster marked offline
        entry.aggregate = aggregate
        # What it rejected may fit now: offer those tasks to it again.
        for task in list(self._pending):
            if cluster_id in task.rejected_by:
                rest = [c for c in task.rejected_by if c != cluster_id]
                self._pending.put(task.model_copy(update={"rejected_by": rest}))
        self._kick.set()

    async def _on_alive(self, worker_id: str, alive: Alive) -> None:
        entry = self.registry.get(worker_id)
        if not alive.online:
            if entry is not None and entry.online and alive.session in ("", entry.session):
                reason = f"worker {worker_id} {'left' if alive.leaving else 'disconnected'}"
                await self._mark_offline(entry, reason, leaving=alive.leaving)
            return
        if entry is None or alive.session != entry.session:
            await self._send(worker_id, "reregister", Reregister(reason="unknown session"))
            return
        mono = self.clock.monotonic()
        entry.last_seen = mono
        update: dict[str, object] = {"last_seen": self.clock.now()}
        if alive.usage is not None:
            update["usage"] = alive.usage
        if not entry.online:
            update["state"] = "draining" if entry.draining else "online"
            log.info("worker back online", extra={"worker_id": worker_id})
            self._kick.set()
            # Back in the same session: what was lost meanwhile runs elsewhere now.
            surplus = grace.surplus(alive.active, entry.tasks)
            if surplus:
                await self._send(worker_id, "task.stop", StopTasks(task_ids=surplus))
        entry.worker = entry.worker.model_copy(update=update)
        if alive.epoch != self._epoch:
            return
        # Tasks sent in a command the worker has acknowledged seeing, yet it does not
        # report them: they are gone (e.g. the worker dropped them while restarting).
        reported = set(alive.active)
        missing = [
            tid
            for tid, r in entry.tasks.items()
            if r.seq is not None and r.seq <= alive.seq and tid not in reported
        ]
        if missing:
            await self._lose_tasks(
                entry, f"worker {worker_id} does not know the task", only=missing
            )

    async def _on_events(self, worker_id: str, events: Iterable[TaskEvent]) -> None:
        now = self.clock.now()
        entry = self.registry.get(worker_id)
        changed: dict[str, Task] = {}
        acks: list[EventKey] = []
        for event in events:
            self.stats.events += 1
            if event.state != "running":
                acks.append(EventKey(task_id=event.task_id, attempt=event.attempt))
            task = self._active.get(event.task_id)
            if task is None or self._member_of(task) != worker_id:
                continue
            new = lifecycle.apply_event(task, event, now, self.settings.retry_backoff_s)
            if new is None:
                continue
            changed[new.id] = new
            if new.state in ("scheduled", "running"):
                self._active[new.id] = new
                continue
            del self._active[new.id]
            if entry is not None:
                entry.tasks.pop(new.id, None)
            if new.state == "pending":
                self._pending.put(new)
        if changed:
            self._kick.set()

        async def after() -> None:
            # Only once the results are durable may the worker forget them.
            self._resolve(changed.values())
            if acks:
                # QoS 0: a lost ack costs one resend of the events, which are acked again
                # (duplicates are ignored); QoS 1 would cost a PUBACK each way per batch.
                await self._send(worker_id, "task.ack", AckEvents(keys=acks), qos=0)

        self.journal.write(changed.values(), then=after)

    # ------------------------------------------------------------------ scheduling
    async def _schedule_loop(self) -> None:
        while True:
            timeout = self._next_due_in()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout)
            # Under load, let the events arriving together free their slots before one
            # pass places tasks on all of them (bigger task.start batches, fewer commits).
            # When the last pass was small, waiting only adds latency: just yield once.
            await asyncio.sleep(SCHEDULE_WINDOW_S if self._busy else 0)
            self._kick.clear()
            try:
                await self._schedule_once()
            except Exception:
                log.exception("scheduling pass failed")
                await asyncio.sleep(0.5)

    def _next_due_in(self) -> float | None:
        if self._next_due is None:
            return None
        return max(0.01, self._next_due - self.clock.now())

    async def _schedule_once(self) -> None:
        now = self.clock.now()
        if not self._pending:
            # Nothing waits: do not build the member views (10,000 workers saying hello
            # would otherwise cost a pass over all of them each).
            self._next_due = None
            return
        views = [] if self.root else self.registry.schedulable()
        candidates = self._pending.candidates(now, self._window(views))
        self._next_due = candidates.next_due
        due = candidates.due
        if not due:
            return
        plan = self._plan([self._pending.demand(t) for t in due], views)
        self._cursor = plan.cursor
        for task_id, reason in plan.waiting.items():
            # Wait reasons are recomputed every pass; they live in memory only.
            task = self._pending.get(task_id)
            if task is not None and task.reason != reason:
                self._pending.put(lifecycle.wait_reason(task, reason, now))
        self._busy = len(plan.assignments) >= BUSY_PASS
        chosen = [
            (waiting, member_id)
            for task_id, member_id in plan.assignments
            if (waiting := self._pending.pop(task_id)) is not None
        ]
        if not chosen:
            return
        batches = self._assign(chosen, now)

        async def dispatch() -> None:
            await self._send_batches(batches)

        self.journal.write([t for _, tasks in batches for t in tasks], then=dispatch)

    def _place(self, tasks: list[Task]) -> list[_Batch]:
        """Place new tasks (not yet stored) at once where they fit now; see :meth:`submit`."""
        if not tasks:
            return []
        views = [] if self.root else self.registry.schedulable()
        plan = self._plan([demand_of(t) for t in tasks], views)
        self._cursor = plan.cursor
        by_id = {t.id: t for t in tasks}
        chosen = [(by_id[i], member) for i, member in plan.assignments]
        return self._assign(chosen, self.clock.now())

    def _assign(self, chosen: list[tuple[Task, str]], now: float) -> list[_Batch]:
        """Give each task to its member: the task's new version, tracked as active, and a
        reservation on the member; one batch (one ``task.start``) per member."""
        by_member: dict[str, list[Task]] = defaultdict(list)
        for waiting, member_id in chosen:
            if self.root:
                task = lifecycle.place(waiting, member_id, now)
            else:
                task = lifecycle.assign(waiting, member_id, self.settings.cluster_id, now)
            self._active[task.id] = task
            by_member[member_id].append(task)
        batches = []
        for member_id, tasks in by_member.items():
            entry = self.registry.get(member_id)
            if entry is not None:
                for task in tasks:
                    entry.tasks[task.id] = self._reservation(task, seq=None, session="")
                batches.append((entry, tasks))
        return batches

    def _unplace(self, batches: list[_Batch]) -> None:
        """Undo :meth:`_place` for tasks whose insert failed: they never existed (their
        ids were new to the manager, so nothing else is tracked under them)."""
        for entry, tasks in batches:
            for task in tasks:
                del self._active[task.id]
                entry.tasks.pop(task.id, None)

    async def _send_batches(self, batches: list[_Batch]) -> None:
        """Dispatch tasks already recorded as scheduled. The members they go to are stored
        first as well: a restarted manager must know where its tasks went.

        Commands reach a member in ``seq`` order, one at a time: it reports the highest
        ``seq`` it has seen, and a task sent with a lower one that it does not report is
        taken as lost; an artifact goes inline only in the first command that needs it.
        Placements made apart (a submit placing at once, a scheduling pass) may be ready
        in either order, so each command takes its seq when it is built, under the lock.
        """
        if any(entry.worker.id in self._unsaved for entry, _ in batches):
            await self._flush_workers()
        async with self._sending:
            for entry, tasks in batches:
                await self._dispatch(entry, tasks)

    def _window(self, views: list[WorkerView]) -> int:
        """How many pending tasks one pass looks at."""
        if self.root:  # clusters queue what they accept: offer them a large batch
            return 1000
        free = sum(v.free_slots for v in views)
        return max(16, free * _CANDIDATES_PER_SLOT)

    def _plan(self, demands: list[TaskDemand], views: list[WorkerView]) -> Plan:
        if not self.root:
            return make_plan(
                self.settings.scheduler,
                views,
                demands,
                cursor=self._cursor,
                pack=self.settings.pack,
            )
        # A task rejected by `placement_attempts` clusters in a row waits for an aggregate
        # to change (which clears that cluster from its rejections) instead of cycling.
        limit = self.settings.placement_attempts
        tired = {
            d.id: d
            for d in demands
            if len(d.exclude) >= limit or (d.cluster_id is not None and d.cluster_id in d.exclude)
        }
        plan = place_on_clusters(
            self.registry.cluster_views(),
            [d for d in demands if d.id not in tired],
            pack=self.settings.pack,
        )
        waiting = dict(plan.waiting)
        for demand in tired.values():
            rejected = ", ".join(sorted(demand.exclude))
            waiting[demand.id] = f"rejected by {rejected}; waiting for their capacity to change"
        return Plan(assignments=plan.assignments, waiting=waiting, cursor=0)

    async def _dispatch(self, entry: WorkerEntry, tasks: list[Task]) -> None:
        """One ``task.start``, with its seq taken now (see :meth:`_send_batches`)."""
        assignments = []
        for task in tasks:
            inline = None
            if task.artifact is not None and task.artifact not in entry.artifacts:
                data = await self.artifact(task.artifact)
                inline = base64.b64encode(data).decode() if data is not None else None
                entry.artifacts.add(task.artifact)
            assignments.append(
                Assignment(
                    task_id=task.id,
                    attempt=task.attempt,
                    name=task.name,
                    runtime=task.runtime,
                    mode=task.mode,
                    entrypoint=task.entrypoint,
                    artifact=task.artifact,
                    artifact_b64=inline,
                    inputs=task.inputs,
                    cli_args=task.cli_args,
                    env=task.env,
                    command=task.command,
                    image=task.image,
                    limits=task.limits,
                    daemon=task.daemon,
                    **(self._for_cluster(task) if self.root else {}),
                )
            )
        self.stats.dispatched += len(assignments)
        entry.sent_seq += 1
        seq = entry.sent_seq
        for task in tasks:
            held = entry.tasks.get(task.id)
            if held is not None and held.seq is None:
                entry.tasks[task.id] = replace(held, seq=seq, session=entry.session)
        start = StartTasks(tasks=assignments, epoch=self._epoch, seq=seq)
        await self._send(entry.worker.id, "task.start", start)

    @staticmethod
    def _for_cluster(task: Task) -> dict[str, object]:
        """What a cluster's own scheduler needs besides what a worker needs."""
        return {
            "retries": task.retries,
            "priority": task.priority,
            "constraints": task.constraints,
            "metadata": task.metadata,
            "pinned_worker": task.pinned_worker,
        }

    @staticmethod
    def _reservation(task: Task, seq: int | None, session: str) -> Reservation:
        return Reservation(
            seq=seq,
            session=session,
            cpu=task.constraints.cpu or 0.0,
            memory_mb=task.constraints.memory_mb or 0,
            daemon=task.daemon,
        )

    # ------------------------------------------------------------------ liveness
    async def _liveness_loop(self) -> None:
        period = max(0.05, min(1.0, self.settings.heartbeat_s / 2))
        while True:
            await asyncio.sleep(period)
            # A silent member is declared lost no later than `missed_beats` heartbeats
            # after its last message: the sweep's own period is taken off the deadline
            # (at 5 s beats: 14 to 15 s of silence; a live member is 1 beat behind at most).
            deadline = self.settings.heartbeat_s * self.settings.missed_beats - period
            mono = self.clock.monotonic()
            for entry in self.registry.entries():
                if entry.online and mono - entry.last_seen > deadline:
                    missed = self.settings.missed_beats
                    try:
                        await self._mark_offline(
                            entry, f"{self.member} {entry.worker.id} missed {missed} heartbeats"
                        )
                    except Exception:
                        log.exception("marking a worker offline failed")
            members = ((e.worker.id, e.online, bool(e.tasks)) for e in self.registry.entries())
            for member_id, reason in self.grace.expired(members, mono).items():
                held = self.registry.get(member_id)
                if held is not None:
                    await self._lose_tasks(held, reason)

    async def _mark_offline(
        self, entry: WorkerEntry, reason: str, *, leaving: bool = False
    ) -> None:
        self.stats.lost_workers += 1
        log.warning(
            f"{self.member} offline", extra={f"{self.member}_id": entry.worker.id, "reason": reason}
        )
        entry.worker = entry.worker.model_copy(update={"state": "offline"})
        entry.artifacts.clear()
        self._persist(entry.worker)
        mono, ids = self.clock.monotonic(), list(entry.tasks)
        at_once = self.grace.lose_now(
            entry.worker.id, ids, self._active, reason=reason, now=mono, leaving=leaving
        )
        await self._lose_tasks(entry, reason, only=at_once)

    async def _lose_tasks(
        self, entry: WorkerEntry, reason: str, only: Sequence[str] | None = None
    ) -> None:
        """Tasks of a lost worker: retried elsewhere when retries remain, else failed."""
        now = self.clock.now()
        ids = list(entry.tasks) if only is None else list(only)
        changed = []
        for task_id in ids:
            entry.tasks.pop(task_id, None)
            task = self._active.pop(task_id, None)
            if task is None:
                continue
            new = lifecycle.lose(task, reason, now, self.settings.retry_backoff_s)
            if new.state == "pending":
                self._pending.put(new)
            changed.append(new)
        if changed:
            log.warning("tasks lost", extra={"worker_id": entry.worker.id, "count": len(changed)})
            self._kick.set()
            self.journal.write(changed, then=lambda: self._resolve(changed))

    # ------------------------------------------------------------------ helpers
    def _persist(self, worker: Worker) -> None:
        """Store a member document soon, in a batch: a registration storm of thousands of
        workers must not wait for one transaction each inside the message handler."""
        self._unsaved[worker.id] = worker
        self._save_wake.set()

    async def _persist_loop(self) -> None:
        while True:
            await self._save_wake.wait()
            await asyncio.sleep(PERSIST_WINDOW_S)
            self._save_wake.clear()
            await self._flush_workers()

    async def _flush_workers(self) -> None:
        batch, self._unsaved = list(self._unsaved.values()), {}
        try:
            await self.store.save_workers(batch)
        except Exception:
            log.exception("saving workers failed; retrying", extra={"count": len(batch)})
            for worker in batch:
                self._unsaved.setdefault(worker.id, worker)
            self._save_wake.set()
            await asyncio.sleep(0.5)

    def _resolve(self, tasks: Iterable[Task]) -> None:
        """A task's end is durable: wake its waiters and tell the listeners (workflows)."""
        for task in tasks:
            if task.terminal:
                self.stats.finished[task.state] += 1
                for future in self._waiters.pop(task.id, []):
                    if not future.done():
                        future.set_result(task)
                for listener in self.on_task_end:
                    listener(task)

    async def _send(
        self,
        worker_id: str,
        type_: str,
        body: BaseModel,
        *,
        topic: str | None = None,
        qos: int | None = None,
    ) -> None:
        await self.link.publish(topic or self.topics.cmd(worker_id), encode(type_, body), qos=qos)

    async def artifact(self, digest: str) -> bytes | None:
        data = self._artifacts.get(digest)
        if data is None:
            data = await self.store.get_artifact(digest)
            if data is not None:
                self._remember_artifact(digest, data)
        return data

    def _remember_artifact(self, digest: str, data: bytes) -> None:
        if len(self._artifacts) >= _ARTIFACT_CACHE:
            self._artifacts.pop(next(iter(self._artifacts)))
        self._artifacts[digest] = data
