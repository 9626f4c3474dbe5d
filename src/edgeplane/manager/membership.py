"""Members (workers, or clusters at the root): registration, liveness, loss.

A member says hello (with the tasks it holds), beats ``alive`` every ``heartbeat_s`` and
publishes a last will through the broker. It is declared lost after ``missed_beats``
periods of silence while the manager could hear, or by its will once that settled
(``liveness.py``); its tasks then go back to the queue (retries left) or fail
``worker_lost`` (a worker's host and container tasks only after a grace period,
``grace.py``: they outlive a crashed worker, which re-attaches to them). A member that
says hello tells, by the tasks it reports, which of its tasks are gone and which it never
received (sent again): ``liveness.judge_hello``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from edgeplane.errors import NotFound, Unavailable
from edgeplane.manager import grace, lifecycle
from edgeplane.manager.core import Core
from edgeplane.manager.liveness import Liveness, judge_hello
from edgeplane.manager.registry import WorkerEntry, reservation
from edgeplane.model import Aggregate, Task, Worker
from edgeplane.protocol import Alive, Hello, Reregister, StopTasks, Welcome

log = logging.getLogger(__name__)
#: the longest probe payload read (an epoch id and a sequence number)
MAX_PROBE = 128

#: Seconds member documents wait to be stored together.
PERSIST_WINDOW_S = 0.2


#: Sends tasks already recorded as scheduled to their members (the dispatcher's).
SendBatches = Callable[[list[tuple[WorkerEntry, list[Task]]]], Awaitable[None]]


def succeeds(lineage: str, term: int, over_lineage: str, over_term: int) -> bool:
    """Whether a cluster leader of lease ``lineage`` in ``term`` is a later leader of the
    same cluster than one of ``over_lineage`` in ``over_term``: a lease's term grows each
    time it changes hands, within one store (``edgeplane.store.leases``)."""
    return bool(lineage) and lineage == over_lineage and term > over_term


class Membership:
    def __init__(self, core: Core, epoch: str, broker_url: str, send_batches: SendBatches) -> None:
        self.core = core
        self._epoch = epoch
        self._broker_url = broker_url
        self._send_batches = send_batches
        self._save_wake = asyncio.Event()
        self._connects = 0
        settings = core.settings
        self.liveness = Liveness(
            core.clock, heartbeat_s=settings.heartbeat_s, missed_beats=settings.missed_beats
        )
        #: lost members whose re-attachable tasks wait for them (not at the root, whose
        #: members are clusters that re-place their own tasks)
        self.grace = grace.Grace(
            grace.grace_s(core.settings), hold_all=core.member == "cluster", member=core.member
        )

    # ------------------------------------------------------------------ restart
    def recover(self, workers: Sequence[Worker], tasks: Sequence[Task]) -> None:
        """Rebuild memory after a restart: known members, unfinished started tasks."""
        core = self.core
        now = core.clock.monotonic()
        for worker in workers:
            # Until a member speaks again its liveness clock starts now. A drained one
            # stays drained (its stored state says so: it was online when drained).
            core.registry.add(
                WorkerEntry(worker=worker, last_seen=now, draining=worker.state == "draining")
            )
        for task in tasks:
            if not task.started:
                continue
            entry = core.registry.get(core.level.member_of(task) or "")
            if task.state in ("scheduled", "running") and entry is not None:
                core.active[task.id] = task
                entry.tasks[task.id] = reservation(task, seq=0, session="")
            elif task.state in ("scheduled", "running"):
                why = f"its {core.member} is unknown after a restart"
                core.pending.put(lifecycle.lose(task, why, core.clock.now(), 0.0))
            elif not core.hold(task):  # (an unresolved module: held, resolved again)
                core.pending.put(task)
        if core.pending or core.active:
            log.info(
                "recovered tasks",
                extra={"pending": len(core.pending), "active": len(core.active)},
            )

    # ------------------------------------------------------------------ user calls
    def workers(self) -> list[Worker]:
        return [self._doc(entry) for entry in self.core.registry.entries()]

    def worker(self, worker_id: str) -> Worker:
        return self._doc(self._entry(worker_id))

    async def drain_worker(self, worker_id: str) -> Worker:
        """No new tasks go to a draining worker; its running tasks finish."""
        entry = self._entry(worker_id)
        self.core.journal.check()
        entry.draining = True
        if entry.online:
            entry.worker = entry.worker.model_copy(update={"state": "draining"})
        await self._store_now([entry])
        return self._doc(entry)

    async def undrain_worker(self, worker_id: str) -> Worker:
        """Place tasks on a drained worker again."""
        entry = self._entry(worker_id)
        self.core.journal.check()
        entry.draining = False
        if entry.worker.state == "draining":
            entry.worker = entry.worker.model_copy(update={"state": "online"})
        await self._store_now([entry])
        self.core.kick.set()
        return self._doc(entry)

    def owner_of(self, worker_id: str) -> str | None:
        """The owner of a member (None: no owner, or no such member)."""
        entry = self.core.registry.get(worker_id)
        return None if entry is None else entry.worker.owner

    async def set_owner(self, worker_id: str, owner: str | None) -> Worker:
        """Give a member to ``owner`` (None: to nobody), stored before it answers."""
        entry = self._entry(worker_id)
        self.core.journal.check()
        entry.worker = entry.worker.model_copy(update={"owner": owner})
        await self._store_now([entry])
        return self._doc(entry)

    async def disown(self, owner: str) -> list[str]:
        """Take ``owner``'s members from them (their user is gone: a new user of the same
        name must not inherit them); the ids of those members."""
        owned = [e for e in self.core.registry.entries() if e.worker.owner == owner]
        for entry in owned:
            entry.worker = entry.worker.model_copy(update={"owner": None})
        if owned:
            await self._store_now(owned)
        return [e.worker.id for e in owned]

    async def _store_now(self, entries: Sequence[WorkerEntry]) -> None:
        """Store members' documents before the user is answered. A version waiting in
        ``unsaved`` (the batch of ``persist``) is older: written after, it would undo
        this change, so this one takes its place."""
        for entry in entries:
            self.core.unsaved.pop(entry.worker.id, None)
        journal = self.core.journal
        await journal.settle(journal.write(workers=[e.worker for e in entries]))

    def _entry(self, worker_id: str) -> WorkerEntry:
        entry = self.core.registry.get(worker_id)
        if entry is None:
            raise NotFound(f"worker {worker_id} not found", field="id")
        return entry

    async def delete_worker(self, worker_id: str) -> None:
        journal = self.core.journal
        journal.check()
        entry = self.core.registry.remove(worker_id)
        if entry is None:
            raise NotFound(f"worker {worker_id} not found", field="id")
        self.core.unsaved.pop(worker_id, None)
        await self.lose_tasks(entry, f"worker {worker_id} was deleted")
        await journal.settle(journal.delete("worker", worker_id))

    @staticmethod
    def _doc(entry: WorkerEntry) -> Worker:
        return entry.worker.model_copy(update={"active_tasks": len(entry.tasks)})

    # ------------------------------------------------------------------ messages
    def seen(self, member_id: str, session: str = "") -> None:
        """Any message but a will is a sign of life; one that names another session
        than the member's known one is another process's (``held_by_another``)."""
        entry = self.core.registry.get(member_id)
        if entry is None or not entry.online:
            return
        if not entry.session or session in ("", entry.session):
            entry.last_seen = self.core.clock.monotonic()
            entry.will_heard = False
            self.liveness.heard(member_id)

    @staticmethod
    def held_by_another(entry: WorkerEntry, hello: Hello) -> bool:
        """Whether a hello comes from a second live process with a member's id.

        A new session is normally the member restarted: its old process is gone, and the
        broker said so by its last will (a killed process's socket closes with it), or it
        left, or fell silent until marked offline. While none of that happened, the old
        session is alive, and the newcomer is another process claiming the same id (the
        same ``--worker-id`` or credentials on two machines): taking it as a restart
        would re-place the live one's tasks and leave both fighting over the id.

        Except a cluster's new leader: its lease has the live session's lineage (the
        processes leading one cluster share a store) and a later term, so the live one
        was deposed, whether or not it knows yet (paused, cut off from the store); it
        takes the cluster over (a process of another store claiming the id has another
        lineage, and is refused)."""
        return (
            bool(entry.session)
            and hello.session != entry.session
            and entry.online
            and not entry.will_heard
            and not succeeds(hello.lineage, hello.term, entry.lineage, entry.term)
        )

    async def _refuse(self, entry: WorkerEntry, hello: Hello) -> None:
        core, member_id = self.core, entry.worker.id
        ago = max(0.0, core.clock.monotonic() - entry.last_seen)
        superseded = succeeds(entry.lineage, entry.term, hello.lineage, hello.term)
        if superseded:
            why = (
                f"a later leader of {core.member} {member_id} (term {entry.term}) holds it "
                f"at the root: this one (term {hello.term}) was deposed"
            )
        else:
            why = (
                f"{core.member} id {member_id} is in use by a live {core.member} (heard "
                f"{ago:.1f} s ago): give this one another id, or stop the other first"
            )
        if entry.refused != hello.session:
            entry.refused = hello.session
            said = {
                f"{core.member}_id": member_id,
                "session": hello.session,
                "live_session": entry.session,
            }
            if superseded:  # not a twin: the cluster's own deposed leader
                log.info(f"a deposed leader of a {core.member} said hello", extra=said)
            else:
                core.stats.refused_members += 1
                log.warning(f"refused a second {core.member} with the id of a live one", extra=said)
        refusal = Welcome(
            worker_id=member_id,
            session=hello.session,
            heartbeat_s=core.settings.heartbeat_s,
            error=why,
            superseded=superseded,
        )
        await core.send(member_id, "welcome", refusal, topic=core.level.topics.welcome(member_id))

    async def on_hello(self, member_id: str, hello: Hello) -> None:
        core = self.core
        now, mono = core.clock.now(), core.clock.monotonic()
        entry = core.registry.get(member_id)
        if entry is not None and self.held_by_another(entry, hello):
            await self._refuse(entry, hello)
            return
        self.liveness.resync.discard(member_id)
        if entry is None:
            worker = core.level.new_member(member_id, hello.capabilities, now)
            owner = core.owner_at_join(member_id)  # its join token's, never its own word
            if owner is not None:
                worker = worker.model_copy(update={"owner": owner})
            entry = WorkerEntry(worker=worker)
            core.registry.add(entry)
            log.info(f"{core.member} registered", extra={f"{core.member}_id": member_id})
        if hello.cluster is not None:
            entry.info = hello.cluster
        if hello.aggregate is not None:
            entry.aggregate = hello.aggregate
        known = entry.session
        verdict = judge_hello(
            entry.tasks,
            known,
            hello,
            self._epoch,
            reported_running=[t for t in entry.tasks if self._ran(t)],
        )
        # Before anything awaits: commands sent from now on are this session's
        # (StartTasks.session), which the process leaves alone if they name another.
        entry.session = hello.session
        entry.lineage, entry.term = hello.lineage, hello.term
        entry.will_heard = False
        entry.refused = ""
        if known != hello.session:
            await self._new_session(entry, hello, verdict.lost)
        await self._resend(entry, verdict.resend)
        entry.last_seen = mono
        entry.hold(hello.artifacts)
        entry.worker = entry.worker.model_copy(
            update={
                "capabilities": hello.capabilities,
                "state": "draining" if entry.draining else "online",
                "last_seen": now,
            }
        )
        self.persist(entry.worker)
        welcome = Welcome(
            worker_id=member_id,
            session=hello.session,
            heartbeat_s=core.settings.heartbeat_s,
            broker_url=self._broker_url,
        )
        await core.send(member_id, "welcome", welcome, topic=core.level.topics.welcome(member_id))
        core.kick.set()

    async def _new_session(self, entry: WorkerEntry, hello: Hello, lost: list[str]) -> None:
        """A session we did not know: ``lost`` are the tasks gone with an older process of
        the member, or dropped by this one (``judge_hello``)."""
        member_id = entry.worker.id
        await self.lose_tasks(entry, f"{self.core.member} {member_id} restarted", only=lost)
        entry.artifacts.clear()
        # Tasks it still runs that are no longer its own (lost while it was away and
        # placed elsewhere, or stopped): stop them, so no duplicate keeps running.
        surplus = [tid for tid in hello.active if tid not in entry.tasks]
        if surplus:
            log.info(
                "stopping surplus tasks",
                extra={f"{self.core.member}_id": member_id, "count": len(surplus)},
            )
            await self.core.send(member_id, "task.stop", StopTasks(task_ids=surplus))

    def on_aggregate(self, cluster_id: str, aggregate: Aggregate) -> None:
        core = self.core
        entry = core.registry.get(cluster_id)
        if entry is None or not entry.online:
            return  # an aggregate before hello, or from a cluster marked offline
        entry.aggregate = aggregate
        # What it rejected may fit now: offer those tasks to it again.
        for task in list(core.pending):
            if cluster_id in task.rejected_by:
                rest = [c for c in task.rejected_by if c != cluster_id]
                core.pending.put(task.model_copy(update={"rejected_by": rest}))
        core.kick.set()

    async def on_alive(self, member_id: str, alive: Alive) -> None:
        core = self.core
        entry = core.registry.get(member_id)
        if not alive.online:
            if entry is not None and entry.online and alive.session in ("", entry.session):
                if alive.leaving:  # said by the member itself, not by the broker
                    why = f"{core.member} {member_id} left"
                    await self.mark_offline(entry, why, leaving=True)
                else:
                    entry.will_heard = True
                    self.liveness.will(member_id)  # offline once it settles (liveness.py)
            return
        if entry is not None and alive.session and alive.session == entry.refused:
            return  # the refused process: told already, and it leaves
        if entry is None or alive.session != entry.session:
            await core.send(member_id, "reregister", Reregister(reason="unknown session"))
            return
        entry.last_seen = core.clock.monotonic()
        if alive.artifacts is not None:
            entry.hold(alive.artifacts)
        update: dict[str, object] = {"last_seen": core.clock.now()}
        if alive.usage is not None:
            update["usage"] = alive.usage
        if not entry.online:
            update["state"] = "draining" if entry.draining else "online"
            log.info(f"{core.member} back online", extra={f"{core.member}_id": member_id})
            core.kick.set()
            # Back in the same session: what was lost meanwhile runs elsewhere now.
            surplus = grace.surplus(alive.active, entry.tasks)
            if surplus:
                await core.send(member_id, "task.stop", StopTasks(task_ids=surplus))
        entry.worker = entry.worker.model_copy(update=update)
        if alive.epoch != self._epoch or member_id in self.liveness.resync:
            return  # (resync: commands may have been dropped; its hello gets them again)
        # Tasks sent in a command the member has acknowledged seeing, yet it does not
        # report them: they are gone (e.g. the member dropped them while restarting).
        reported = set(alive.active)
        missing = [
            tid
            for tid, r in entry.tasks.items()
            if r.seq is not None and r.seq <= alive.seq and tid not in reported
        ]
        if missing:
            why = f"{core.member} {member_id} does not know the task"
            await self.lose_tasks(entry, why, only=missing)

    # ------------------------------------------------------------------ liveness
    async def liveness_loop(self) -> None:
        """Judged on what the manager could hear: see ``liveness.py``."""
        core = self.core
        missed = core.settings.missed_beats
        while True:
            await self.liveness.pause()
            self._probe()
            lost = [
                (entry, f"{core.member} {entry.worker.id} disconnected")
                for member_id in self.liveness.settled_wills()
                if (entry := core.registry.get(member_id)) is not None and entry.online
            ] + [
                (entry, f"{core.member} {entry.worker.id} missed {missed} heartbeats")
                for entry in core.registry.entries()
                if entry.online and self.liveness.lost(entry.last_seen)
            ]
            for entry, why in lost:
                if not entry.online:
                    continue  # (a settled will and silence both named it)
                try:
                    await self.mark_offline(entry, why)
                except Exception:
                    log.exception("marking a member offline failed")
            entries = core.registry.entries()
            members = ((e.worker.id, e.online, bool(e.tasks)) for e in entries)
            mono = core.clock.monotonic()
            expired = self.grace.expired(members, mono, heard=self.liveness.silence)
            for member_id, reason in expired.items():
                held = core.registry.get(member_id)
                if held is not None:
                    await self.lose_tasks(held, reason)

    def _probe(self) -> None:
        """Send this sweep's probe (``liveness.py``); with the outbox full, none."""
        nonce = self.liveness.probe(self._epoch)
        with contextlib.suppress(Unavailable):
            self.core.link.publish_nowait(self.core.level.topics.probe, nonce.encode(), qos=1)

    def probe_back(self, payload: bytes) -> None:
        if len(payload) <= MAX_PROBE:  # a nonce; anything longer is not one of ours
            self.liveness.probe_back(payload.decode(errors="replace"))

    async def link_up(self) -> None:
        """The manager's link (re)connected: members are judged afresh and asked to say
        hello, which gets them what the broker may have dropped meanwhile. On the first
        connect after a start (a restart, or a standby that took over) that is every member
        it recovered: asked now, a member is back in one round trip, not at its next
        heartbeat (takeover time, docs/operations.md)."""
        core = self.core
        first = self._connects == 0
        self._connects += 1
        online = [] if first else [e.worker.id for e in core.registry.entries() if e.online]
        self.liveness.link_up(online)
        asked = [e.worker.id for e in core.registry.entries()] if first else online
        reason = "manager started" if first else "manager reconnected"
        for member_id in asked:
            await core.send(member_id, "reregister", Reregister(reason=reason))

    def link_down(self) -> None:
        self.liveness.link_down()

    async def _resend(self, entry: WorkerEntry, task_ids: Sequence[str]) -> None:
        """Send again, in a new command, tasks a member never received (``judge_hello``)."""
        core = self.core
        tasks = [core.active[t] for t in task_ids if t in core.active]
        if not tasks:
            return
        for task in tasks:
            entry.tasks[task.id] = replace(entry.tasks[task.id], seq=None)
        entry.artifacts.clear()  # the commands that carried its modules may be the lost ones
        log.info(
            "sending tasks again",
            extra={f"{core.member}_id": entry.worker.id, "count": len(tasks)},
        )
        await self._send_batches([(entry, tasks)])

    def _ran(self, task_id: str) -> bool:
        """Whether the member ever reported the task running."""
        task = self.core.active.get(task_id)
        return task is not None and task.state != "scheduled"

    async def mark_offline(self, entry: WorkerEntry, reason: str, *, leaving: bool = False) -> None:
        core = self.core
        core.stats.lost_workers += 1
        self.liveness.forget(entry.worker.id)
        log.warning(
            f"{core.member} offline", extra={f"{core.member}_id": entry.worker.id, "reason": reason}
        )
        entry.worker = entry.worker.model_copy(update={"state": "offline"})
        entry.artifacts.clear()
        self.persist(entry.worker)
        mono, ids = core.clock.monotonic(), list(entry.tasks)
        at_once = self.grace.lose_now(
            entry.worker.id, ids, core.active, reason=reason, now=mono, leaving=leaving
        )
        await self.lose_tasks(entry, reason, only=at_once)

    async def lose_tasks(
        self, entry: WorkerEntry, reason: str, only: Sequence[str] | None = None
    ) -> None:
        """Tasks of a lost member: retried elsewhere when retries remain, else failed."""
        core = self.core
        now = core.clock.now()
        ids = list(entry.tasks) if only is None else list(only)
        changed = []
        for task_id in ids:
            entry.tasks.pop(task_id, None)
            task = core.active.pop(task_id, None)
            if task is None:
                continue
            new = lifecycle.lose(task, reason, now, core.settings.retry_backoff_s)
            if new.state == "pending":
                core.pending.put(new)
            changed.append(new)
        if changed:
            log.warning(
                "tasks lost", extra={f"{core.member}_id": entry.worker.id, "count": len(changed)}
            )
            core.kick.set()
            core.journal.write(changed, then=lambda: core.resolve(changed))

    # ------------------------------------------------------------------ member documents
    def persist(self, worker: Worker) -> None:
        """Store a member document soon, in a batch: a registration storm of thousands of
        workers must not wait for one transaction each inside the message handler."""
        self.core.unsaved[worker.id] = worker
        self._save_wake.set()

    async def persist_loop(self) -> None:
        while True:
            await self._save_wake.wait()
            await asyncio.sleep(PERSIST_WINDOW_S)
            self._save_wake.clear()
            await self.flush()

    async def flush(self) -> None:
        batch, self.core.unsaved = list(self.core.unsaved.values()), {}
        if batch:
            await self.core.journal.write(workers=batch)
