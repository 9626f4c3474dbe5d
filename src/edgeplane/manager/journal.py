"""One commit path for every document: tasks, workflow runs, schedules, applications and
members (workers or clusters).

Many small changes (dispatches, events, losses, a run's state) arrive one at a time;
writing each in its own transaction makes the store the bottleneck. The journal has one
writer (:meth:`Journal.run`): every change queued while a transaction runs goes into the
next one, the newest version of each document winning, and what depends on durability
(acks to workers, dispatches, waking waiters, listeners) runs only once it committed.

Failures never lose or stick work:

- the store cannot be reached (:class:`Unavailable`, or a ping fails after an error):
  the journal is *down* — the same changes are tried again with backoff until it
  answers, callers that must answer a user get :class:`Unavailable` (503) instead of
  waiting, and work continues by itself when the store is back;
- the store refuses a change (a constraint, a value it cannot hold, an id that is taken):
  the batch is split until the refused changes are found; those writes fail (their
  futures raise, their callbacks never run) and every other change commits. A refused
  change is never retried, so it cannot hold the others back.

Readers see only committed versions (:meth:`Journal.committed`); the manager's own
working copies may be ahead of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from edgeplane.errors import Conflict, EdgeplaneError, Fenced, Invalid, Unavailable
from edgeplane.manager.changes import Change, Changes
from edgeplane.model import Application, Schedule, Task, Worker, Workflow
from edgeplane.model.audit import AuditRecord
from edgeplane.store import AuditPrune, Batch, Kind, Store
from edgeplane.telemetry import Histogram

log = logging.getLogger(__name__)

After = Callable[[], Awaitable[None] | None]

#: First and longest pause between attempts while the store cannot be reached.
RETRY_MIN_S = 0.1
RETRY_MAX_S = 2.0
#: Seconds a ping may take before the store counts as unreachable.
PING_S = 5.0
#: Seconds a user's request waits for its change to commit before it answers 503.
USER_WAIT_S = 10.0
#: Recently committed task versions kept for readers (see :meth:`Journal.committed`).
RECENT = 4096

#: A unit of a batch: ("new", n) for an insert group, (kind, id) for an upsert,
#: ("delete:" + kind, id) for a delete, ("audit", n) for audit records.
_Key = tuple[str, object]


@dataclass
class _Entry:
    """One call of :meth:`Journal.write`, :meth:`Journal.insert` or :meth:`Journal.delete`."""

    keys: list[_Key]
    then: After | None
    done: asyncio.Future[None]


@dataclass
class JournalStats:
    rounds: int = 0
    #: changes the store refused (each one failed its write instead of being retried)
    refused: int = 0
    #: attempts that found the store unreachable
    outages: int = 0
    #: rounds refused because another process leads now
    fenced: int = 0
    #: seconds each round took to write (outages waited out included)
    commit_latency: Histogram = field(default_factory=Histogram)


#: What a unit holds, by the first part of its key: the document itself for an upsert,
#: ``(tasks, workflow or None)`` for an insert group, ``(kind, id)`` for a delete,
#: ``(records, prune or None)`` for audit records. (A
#: whole Batch per unit cost eight lists per task version on the hot path.)
_Unit = Any


def _batch(keys: Iterable[_Key], units: dict[_Key, _Unit]) -> Batch:
    out = Batch()
    upserts: dict[str, list[Any]] = {
        "task": out.tasks,
        "workflow": out.workflows,
        "schedule": out.schedules,
        "application": out.applications,
        "worker": out.workers,
    }
    for key in keys:
        unit, kind = units[key], key[0]
        target = upserts.get(kind)
        if target is not None:
            target.append(unit)
        elif kind == "new":
            out.new_tasks += unit[0]
            if unit[1] is not None:
                out.new_workflows.append(unit[1])
        elif kind == "audit":
            out.audit += unit[0]
            if unit[1] is not None:
                out.audit_prune = unit[1]
        else:
            out.deleted.append(unit)
    return out


def _tasks_of(key: _Key, unit: _Unit) -> list[Task]:
    """The task versions a unit writes."""
    if key[0] == "task":
        return [unit]
    return list(unit[0]) if key[0] == "new" else []


def _changes(key: _Key, unit: _Unit) -> list[Change]:
    """What a committed unit changed, for watchers (audit records are not watched)."""
    kind = key[0]
    if kind == "new":
        found: list[Change] = [("task", t.id, t) for t in unit[0]]
        if unit[1] is not None:
            found.append(("workflow", unit[1].id, unit[1]))
        return found
    if kind == "audit":
        return []
    if kind.startswith("delete:"):
        return [(unit[0], unit[1], None)]
    return [(kind, unit.id, unit)]


def _consume(future: asyncio.Future[None]) -> None:
    """A write nobody awaits may fail: that is logged here, not as 'never retrieved'."""
    if not future.cancelled():
        future.exception()


class Journal:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._queue: list[tuple[_Entry, list[tuple[_Key, _Unit]]]] = []
        #: newest queued or in-flight version of each task (the manager's own reads)
        self._unwritten: dict[str, Task] = {}
        self._recent: OrderedDict[str, Task] = OrderedDict()
        self._wake = asyncio.Event()
        self._inserts = 0
        self.stats = JournalStats()
        #: why the store cannot be written right now (None: it can)
        self.down: str | None = None
        #: called with every committed batch of tasks (through the manager's ``on_commit``)
        self.listeners: list[Callable[[list[Task]], None]] = []
        #: called when the store refuses a write as fenced: another process leads now
        #: (``manager/leadership.py``); the write fails, nothing is retried
        self.on_fenced: list[Callable[[Fenced], None]] = []
        #: every committed document, for watchers (the dashboard's event stream)
        self.changes = Changes()

    # ------------------------------------------------------------------ queueing
    def write(
        self,
        tasks: Iterable[Task] = (),
        then: After | None = None,
        *,
        workflows: Iterable[Workflow] = (),
        schedules: Iterable[Schedule] = (),
        applications: Iterable[Application] = (),
        workers: Iterable[Worker] = (),
    ) -> asyncio.Future[None]:
        """Queue new versions of documents; the future resolves once they committed, or
        raises when the store refused one of them (``then`` then never runs)."""
        units: list[tuple[_Key, _Unit]] = []
        unwritten = self._unwritten
        for task in tasks:
            units.append((("task", task.id), task))
            unwritten[task.id] = task
        units += [(("workflow", w.id), w) for w in workflows]
        units += [(("schedule", s.id), s) for s in schedules]
        units += [(("application", a.id), a) for a in applications]
        units += [(("worker", w.id), w) for w in workers]
        return self._enqueue(units, then)

    def insert(
        self, tasks: Iterable[Task], workflow: Workflow | None = None, then: After | None = None
    ) -> asyncio.Future[None]:
        """Queue new documents, inserted together or not at all: the future raises
        :class:`Conflict` when an id is taken (how a cron slot fires once)."""
        tasks = list(tasks)
        self._inserts += 1
        for task in tasks:
            self._unwritten[task.id] = task
        return self._enqueue([(("new", self._inserts), (tasks, workflow))], then)

    def audit(
        self, records: list[AuditRecord], prune: AuditPrune | None = None
    ) -> asyncio.Future[None]:
        """Queue audit records (and a prune of old ones) for the next transaction."""
        self._inserts += 1
        return self._enqueue([(("audit", self._inserts), (records, prune))], None)

    def delete(self, kind: Kind, doc_id: str) -> asyncio.Future[None]:
        if kind == "task":
            self._unwritten.pop(doc_id, None)
            self._recent.pop(doc_id, None)
        return self._enqueue([((f"delete:{kind}", doc_id), (kind, doc_id))], None)

    def _enqueue(self, units: list[tuple[_Key, _Unit]], then: After | None) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.add_done_callback(_consume)
        self._queue.append((_Entry([k for k, _ in units], then, done), units))
        self._wake.set()
        return done

    @property
    def queued(self) -> int:
        """Changes waiting for the writer's next round."""
        return len(self._queue)

    async def commit(self) -> None:
        """Wake the writer and return once everything queued so far has been written (or
        refused). Only :meth:`run` writes: commits never interleave."""
        if self._queue:
            await self._enqueue([], None)

    def check(self) -> None:
        """:class:`Unavailable` while the store cannot be written: a user's change is
        refused up front (503) instead of waiting for the store."""
        if self.down is not None:
            raise Unavailable(f"the store is unavailable ({self.down}); try again later")

    async def settle(self, done: asyncio.Future[None]) -> None:
        """Await a user's write, but answer 503 rather than wait long for a store that
        went away meanwhile (the change stays queued and is written when it returns)."""
        try:
            await asyncio.wait_for(asyncio.shield(done), USER_WAIT_S)
        except TimeoutError:
            raise Unavailable(
                "the store is unavailable; the change is queued and is written when it returns"
            ) from None

    # ------------------------------------------------------------------ reading
    def committed(self, task_id: str) -> Task | None:
        """A recently committed version of a task (None: read the store). A reader's
        store query may have started before a commit it then overtakes; this lets it
        replace what it read with what it missed. Never a version that is not stored."""
        return self._recent.get(task_id)

    def unwritten(self, task_id: str) -> Task | None:
        """The task's version queued or being written, not yet committed (None: none)."""
        return self._unwritten.get(task_id)

    def newest(self, task_id: str) -> Task | None:
        """The newest version the journal holds, written or not (for the manager's own
        decisions, never for answering readers)."""
        return self._unwritten.get(task_id) or self._recent.get(task_id)

    # ------------------------------------------------------------------ the writer
    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await self._round()

    async def _round(self) -> None:
        queued, self._queue = self._queue, []
        work: dict[_Key, _Unit] = {}
        for _, units in queued:
            for key, unit in units:
                if key[0].startswith("delete:"):
                    work.pop((key[0].removeprefix("delete:"), key[1]), None)
                work.pop(key, None)  # a newer version replaces (and re-orders after) the older
                work[key] = unit
        self.stats.rounds += 1
        began = time.perf_counter()
        refused = await self._write(dict(work))
        self.stats.commit_latency.observe(time.perf_counter() - began)
        committed: list[Task] = []
        recent, unwritten = self._recent, self._unwritten
        for key, unit in work.items():
            if refused and key in refused:
                continue
            # A task version (most units) is taken as it is, not through a list built
            # per unit by _tasks_of: with TaskService.resolve's change, a round of 1,000
            # task ends took 3.4 -> 2.5 us per task, store excluded (microbenchmark)
            kind = key[0]
            if kind == "task":
                tasks: Iterable[Task] = (unit,)
            elif kind == "new":
                tasks = unit[0]
            else:
                continue
            for task in tasks:
                committed.append(task)
                recent[task.id] = task
                recent.move_to_end(task.id)
                if unwritten.get(task.id) is task:
                    del unwritten[task.id]
        while len(recent) > RECENT:
            recent.popitem(last=False)
        for key in refused:
            for task in _tasks_of(key, work[key]):
                if self._unwritten.get(task.id) is task:
                    del self._unwritten[task.id]
        if self.changes:  # nobody watching: this test is all it costs
            self.changes.publish(
                [c for k, u in work.items() if k not in refused for c in _changes(k, u)]
            )
        if committed:
            for listener in self.listeners:
                try:
                    listener(committed)
                except Exception:
                    log.exception("journal listener failed")
        for entry, _ in queued:
            error = None
            if refused:  # (nothing refused, the usual round: no generator per entry)
                error = next((refused[k] for k in entry.keys if k in refused), None)
            if error is not None:
                if not entry.done.done():
                    entry.done.set_exception(error)
                continue
            if entry.then is not None:
                try:
                    result = entry.then()
                    if result is not None:
                        await result
                except Exception:
                    log.exception("journal callback failed")
            if not entry.done.done():
                entry.done.set_result(None)

    async def _write(self, units: dict[_Key, _Unit]) -> dict[_Key, EdgeplaneError]:
        """Write every unit or find the ones the store refuses; wait out outages."""
        refused: dict[_Key, EdgeplaneError] = {}
        delay = RETRY_MIN_S
        while units:
            try:
                await self._isolate(list(units), units, refused)
            except Fenced as exc:
                self.stats.fenced += 1
                refused.update(dict.fromkeys(units, exc))
                units.clear()
                for listener in self.on_fenced:
                    listener(exc)
                self.down = None  # not an outage that ended: this process writes no more
                break
            except Unavailable as exc:
                self.stats.outages += 1
                if self.down is None:
                    log.error(
                        "store unavailable; changes are kept and retried",
                        extra={"error": exc.detail, "changes": len(units)},
                    )
                self.down = exc.detail
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
        if self.down is not None:
            log.warning("store available again")
            self.down = None
        return refused

    async def _isolate(
        self, keys: list[_Key], units: dict[_Key, _Unit], refused: dict[_Key, EdgeplaneError]
    ) -> None:
        """Apply ``keys`` in one transaction; when the store refuses it, split in halves
        (order kept: an insert before the updates of its documents) down to the refused
        units. Written and refused units leave ``units``; :class:`Unavailable` propagates
        with the rest still in it."""
        keys = [k for k in keys if k in units]
        if not keys:
            return
        try:
            await self._store.apply(_batch(keys, units))
        except Fenced:
            raise  # no process of this term may write any of it
        except Exception as exc:
            if isinstance(exc, Unavailable) or not await self._reachable():
                raise Unavailable(getattr(exc, "detail", None) or type(exc).__name__) from exc
            if len(keys) > 1:
                half = len(keys) // 2
                await self._isolate(keys[:half], units, refused)
                await self._isolate(keys[half:], units, refused)
                return
            self._refuse(keys[0], exc, units, refused)
            return
        for key in keys:
            del units[key]

    def _refuse(
        self,
        key: _Key,
        exc: Exception,
        units: dict[_Key, _Unit],
        refused: dict[_Key, EdgeplaneError],
    ) -> None:
        self.stats.refused += 1
        if isinstance(exc, Conflict):
            error: EdgeplaneError = exc
        else:
            log.error(
                "the store refused a change",
                # (without the statement's parameters: they hold the documents, secret
                # env included; SQLAlchemy puts them after "[parameters:")
                extra={"change": f"{key[0]} {key[1]}", "error": _no_parameters(exc)},
            )
            error = Invalid(f"the store refused {key[0]} {key[1]}: {type(exc).__name__}")
        unit = units.pop(key)
        refused[key] = error
        # Updates of documents whose insert was refused would overwrite the documents
        # that hold those ids: they fail with it.
        for task in unit[0] if key[0] == "new" else ():
            if ("task", task.id) in units:
                units.pop(("task", task.id))
                refused[("task", task.id)] = error

    async def _reachable(self) -> bool:
        try:
            await asyncio.wait_for(self._store.ping(), PING_S)
        except Exception:
            return False
        return True


def _no_parameters(exc: Exception) -> str:
    """``exc``'s text without the bound parameters a database error may carry."""
    return str(exc).split("[parameters:", 1)[0].strip()[:500]
