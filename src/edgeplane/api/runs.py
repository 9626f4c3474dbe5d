"""/api/v1/jobs, /api/v1/workflows and /api/v1/schedules."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from edgeplane.api.deps import CallerDep
from edgeplane.api.params import Limit, Offset, Wait
from edgeplane.api.routing import JsonRoute
from edgeplane.manager.schedules import Schedules
from edgeplane.manager.workflows import Workflows
from edgeplane.model import JobSpec, Page, Schedule, Workflow, WorkflowSpec
from edgeplane.model.secrets import REVEAL
from edgeplane.model.workflow import WorkflowKind
from edgeplane.security import projects


def _workflows(request: Request) -> Workflows:
    found: Workflows = request.app.state.workflows
    return found


def _schedules(request: Request) -> Schedules:
    found: Schedules = request.app.state.schedules
    return found


WorkflowsDep = Annotated[Workflows, Depends(_workflows)]
SchedulesDep = Annotated[Schedules, Depends(_schedules)]


async def _create(
    spec: WorkflowSpec, kind: WorkflowKind, runs: Workflows, schedules: Schedules
) -> Workflow | Schedule:
    if spec.schedule is not None:
        return await schedules.create(
            "job",
            spec.model_dump(mode="json", context=REVEAL),
            name=spec.name,
            cron=spec.schedule,
            timezone=spec.timezone,
            catch_up=spec.catch_up,
        )
    return await runs.create(spec, kind)


def _router(kind: WorkflowKind, prefix: str, spec_type: type[WorkflowSpec]) -> APIRouter:
    router = APIRouter(prefix=prefix, tags=[prefix.strip("/")], route_class=JsonRoute)

    async def create(
        spec: WorkflowSpec, runs: WorkflowsDep, schedules: SchedulesDep, caller: CallerDep
    ) -> Workflow | Schedule:
        projects.check_new(caller, spec.project)
        return await _create(spec, kind, runs, schedules)

    # The body model differs per router (JobSpec has ``mode``): give FastAPI the real class.
    create.__annotations__["spec"] = spec_type
    router.post("", status_code=201, response_model=Workflow | Schedule)(create)

    @router.get("", response_model=Page[Workflow])
    async def list_runs(
        runs: WorkflowsDep, caller: CallerDep, limit: Limit = 100, offset: Offset = 0
    ) -> Page[Workflow]:
        items, total = await runs.list(
            kind, limit=limit, offset=offset, projects=projects.visible(caller)
        )
        return Page[Workflow](items=items, total=total)

    @router.get("/{run_id}", response_model=Workflow)
    async def get_run(
        run_id: str, runs: WorkflowsDep, caller: CallerDep, wait: Wait = 0
    ) -> Workflow:
        projects.check(caller, (await runs.get(run_id, kind)).project, kind, run_id)
        return await runs.wait(run_id, kind, wait)

    @router.post("/{run_id}/stop", response_model=Workflow)
    async def stop_run(run_id: str, runs: WorkflowsDep, caller: CallerDep) -> Workflow:
        projects.check(caller, (await runs.get(run_id, kind)).project, kind, run_id)
        return await runs.stop_run(run_id, kind)

    return router


jobs = _router("job", "/jobs", JobSpec)
workflows = _router("workflow", "/workflows", WorkflowSpec)
schedules = APIRouter(prefix="/schedules", tags=["schedules"], route_class=JsonRoute)


@schedules.get("", response_model=Page[Schedule])
async def list_schedules(
    runs: SchedulesDep, caller: CallerDep, limit: Limit = 100, offset: Offset = 0
) -> Page[Schedule]:
    items, total = await runs.list(limit=limit, offset=offset, projects=projects.visible(caller))
    return Page[Schedule](items=items, total=total)


@schedules.get("/{schedule_id}", response_model=Schedule)
async def get_schedule(schedule_id: str, runs: SchedulesDep, caller: CallerDep) -> Schedule:
    found = await runs.get(schedule_id)
    projects.check(caller, found.project, "schedule", schedule_id)
    return found


@schedules.post("/{schedule_id}/pause", response_model=Schedule)
async def pause_schedule(schedule_id: str, runs: SchedulesDep, caller: CallerDep) -> Schedule:
    """Fire nothing until resumed (pausing a paused schedule changes nothing)."""
    projects.check(caller, (await runs.get(schedule_id)).project, "schedule", schedule_id)
    return await runs.pause(schedule_id)


@schedules.post("/{schedule_id}/resume", response_model=Schedule)
async def resume_schedule(schedule_id: str, runs: SchedulesDep, caller: CallerDep) -> Schedule:
    """Fire again; the schedule's ``catch_up`` policy decides which of the slots missed
    while it was paused still run (``none``, ``last``, ``all``), as after a downtime."""
    projects.check(caller, (await runs.get(schedule_id)).project, "schedule", schedule_id)
    return await runs.resume(schedule_id)


@schedules.delete("/{schedule_id}", status_code=204)
async def delete_schedule(schedule_id: str, runs: SchedulesDep, caller: CallerDep) -> Response:
    projects.check(caller, (await runs.get(schedule_id)).project, "schedule", schedule_id)
    await runs.delete(schedule_id)
    return Response(status_code=204)
