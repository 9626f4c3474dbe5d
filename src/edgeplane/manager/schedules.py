"""Cron schedules of tasks and jobs: persisted, each slot fired once.

A slot's run gets the deterministic id ``schedule_id:slot_epoch``; creating it twice (a
restart, a second manager) hits the store's primary key and is skipped, so a slot never
fires twice. ``next_run`` is persisted after each firing; after downtime the schedule's
``catch_up`` policy decides which missed slots still run.

A paused schedule fires nothing and keeps its ``next_run``: the first slot the pause held
back. Resumed, it is due at once and its ``catch_up`` policy picks among the slots missed
while paused, exactly as after a downtime (``none``: none of them, only a slot due
within the last minute; ``last``: the most recent; ``all``: every one, at most
``MAX_CATCH_UP``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from edgeplane import clock as clocks
from edgeplane.errors import Conflict, NotFound, Unavailable
from edgeplane.manager.facade import Facade
from edgeplane.manager.workflows import Workflows
from edgeplane.model import JobSpec, Schedule, TaskSpec
from edgeplane.model.bounds import STORED
from edgeplane.model.task import CatchUp
from edgeplane.schedules import due_slots, next_slot, parse, run_id

log = logging.getLogger(__name__)

#: Longest sleep between checks, so a schedule created elsewhere is seen soon.
MAX_SLEEP_S = 1.0


class Schedules:
    def __init__(self, manager: Facade, workflows: Workflows) -> None:
        self.manager = manager
        self.workflows = workflows
        self.clock = manager.clock
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        #: held while a schedule fires or a user changes one: a firing writes the schedule
        #: it read back (its next run), which must not undo a pause or a delete made
        #: meanwhile, so it reads the schedule again under this lock
        self._changing = asyncio.Lock()

    async def start(self) -> None:
        self._loop = asyncio.create_task(self._run_loop(), name="schedules")

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None

    async def create(
        self,
        kind: str,
        spec: dict[str, Any],
        *,
        name: str,
        cron: str,
        timezone: str,
        catch_up: CatchUp,
    ) -> Schedule:
        """Validate the body a run is made from, then persist the schedule."""
        parsed = parse(cron, timezone)
        body = {k: v for k, v in spec.items() if k not in ("schedule", "timezone", "catch_up")}
        if kind == "task":
            await self.manager.admit([TaskSpec.model_validate(body)], batch=False)
        else:
            JobSpec.model_validate(body)
        now = self.clock.now()
        schedule = Schedule(
            id=clocks.new_id(),
            project=str(body.get("project", "default")),
            kind="task" if kind == "task" else "job",
            name=name,
            cron=parsed.expression,
            timezone=parsed.timezone,
            catch_up=catch_up,
            spec=body,
            next_run=next_slot(parsed, now),
            created_at=now,
            updated_at=now,
        )
        journal = self.manager.journal
        journal.check()
        await journal.settle(journal.write(schedules=[schedule]))
        self._wake.set()
        return schedule

    async def list(
        self, *, limit: int, offset: int, projects: Sequence[str] | None = None
    ) -> tuple[list[Schedule], int]:
        return await self.manager.documents.list_schedules(
            limit=limit, offset=offset, projects=projects
        )

    async def get(self, schedule_id: str) -> Schedule:
        found = await self.manager.documents.get_schedule(schedule_id)
        if found is None:
            raise NotFound(f"schedule {schedule_id} not found", field="id")
        return found

    async def delete(self, schedule_id: str) -> None:
        journal = self.manager.journal
        journal.check()
        async with self._changing:
            if await self.manager.documents.get_schedule(schedule_id) is None:
                raise NotFound(f"schedule {schedule_id} not found", field="id")
            await journal.settle(journal.delete("schedule", schedule_id))

    async def pause(self, schedule_id: str) -> Schedule:
        """Fire nothing until :meth:`resume` (a paused schedule is answered as it is)."""
        return await self._set_paused(schedule_id, True)

    async def resume(self, schedule_id: str) -> Schedule:
        """Fire again, the slots missed while paused as ``catch_up`` says (module doc)."""
        return await self._set_paused(schedule_id, False)

    async def _set_paused(self, schedule_id: str, paused: bool) -> Schedule:
        journal = self.manager.journal
        journal.check()
        async with self._changing:
            schedule = await self.get(schedule_id)
            if schedule.paused == paused:
                return schedule
            schedule = schedule.model_copy(
                update={"paused": paused, "updated_at": self.clock.now()}
            )
            await journal.settle(journal.write(schedules=[schedule]))
        self._wake.set()
        return schedule

    async def fire_due(self) -> float | None:
        """Fire every due slot; return the earliest next run (None: no schedules)."""
        now = self.clock.now()
        schedules, _ = await self.manager.documents.list_schedules(limit=1_000_000)
        earliest: float | None = None
        for schedule in schedules:
            if schedule.paused:
                continue
            if schedule.next_run is not None and schedule.next_run <= now:
                async with self._changing:
                    current = await self.manager.documents.get_schedule(schedule.id)
                    if current is None or current.paused:
                        continue  # deleted or paused since the list was read
                    schedule = await self._fire(current, now)
            if schedule.next_run is not None:
                earliest = (
                    schedule.next_run if earliest is None else min(earliest, schedule.next_run)
                )
        return earliest

    async def _fire(self, schedule: Schedule, now: float) -> Schedule:
        spec = parse(schedule.cron, schedule.timezone)
        slots, next_run = due_slots(
            spec, schedule.last_slot, schedule.next_run or now, now, schedule.catch_up
        )
        fired = 0
        last_slot = schedule.last_slot
        for slot in slots:
            rid = run_id(schedule.id, slot)
            try:
                if schedule.kind == "task":
                    # checked when the schedule came in; an older version's may be bigger
                    body = TaskSpec.model_validate({**schedule.spec, "start": True}, context=STORED)
                    tasks = await self.manager.admit([body], ids=[rid], batch=False)
                    tasks = [t.model_copy(update={"schedule_id": schedule.id}) for t in tasks]
                    await self.manager.submit(tasks, origin="schedule")
                else:
                    job = JobSpec.model_validate({**schedule.spec, "start": True}, context=STORED)
                    await self.workflows.create(job, "job", run_id=rid, schedule_id=schedule.id)
                fired += 1
            except Conflict:
                log.info("slot already fired", extra={"schedule_id": schedule.id, "slot": slot})
            except Unavailable as exc:
                # The slot did not start: keep it due, so it fires once the store is back
                # (its run id makes a second try harmless) instead of being skipped.
                log.warning(
                    "a scheduled run waits for the store",
                    extra={"schedule_id": schedule.id, "slot": slot, "error": exc.detail},
                )
                next_run = slot
                break
            except Exception:
                log.exception("a scheduled run failed to start", extra={"schedule_id": schedule.id})
            last_slot = slot
        updated = schedule.model_copy(
            update={
                "next_run": next_run,
                "last_slot": last_slot,
                "runs": schedule.runs + fired,
                "updated_at": now,
            }
        )
        await self.manager.journal.write(schedules=[updated])
        return updated

    async def _run_loop(self) -> None:
        waiting = False  # for the store: said once per outage, not every second
        while True:
            try:
                earliest = await self.fire_due()
                waiting = False
            except Unavailable as exc:
                if not waiting:
                    log.warning("schedules wait for the store", extra={"error": exc.detail})
                waiting, earliest = True, None
            except Exception:
                log.exception("firing schedules failed")
                earliest = None
            sleep = MAX_SLEEP_S
            if earliest is not None:
                sleep = min(MAX_SLEEP_S, max(0.0, earliest - self.clock.now()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), sleep)
