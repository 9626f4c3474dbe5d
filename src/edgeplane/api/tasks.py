"""/api/v1/tasks"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from edgeplane.api.audit import note
from edgeplane.api.deps import CallerDep, ManagerDep
from edgeplane.api.follow import follow_logs
from edgeplane.api.params import Limit, Offset, Wait
from edgeplane.api.responses import JSON, document
from edgeplane.api.routing import JsonRoute
from edgeplane.api.usage import Points, Since, Until, UsageSeries, series
from edgeplane.errors import Invalid, NotFound, Unavailable
from edgeplane.limits import MAX_BATCH, MAX_CURSOR, MAX_NAME
from edgeplane.manager import Manager
from edgeplane.manager.schedules import Schedules
from edgeplane.model import (
    Schedule,
    Task,
    TaskLogs,
    TaskPatch,
    TaskResults,
    TaskSpec,
    TaskState,
    task_json,
)
from edgeplane.model.listing import TaskPage, decode_cursor, encode_cursor
from edgeplane.model.secrets import REVEAL
from edgeplane.security import projects
from edgeplane.store import TokenRecord

router = APIRouter(prefix="/tasks", tags=["tasks"], route_class=JsonRoute)


class TaskBatch(BaseModel):
    tasks: list[TaskSpec] = Field(min_length=1, max_length=MAX_BATCH)


class TaskItems(BaseModel):
    items: list[Task]


@router.post("", status_code=201, response_model=Task | Schedule)
async def create_task(
    spec: TaskSpec,
    manager: ManagerDep,
    request: Request,
    caller: CallerDep,
    wait: Wait = 0,
) -> Response:
    """Create a task; with ``schedule`` (cron) create a schedule that makes one per slot.

    With ``wait`` (a started task) the answer comes when the task ended or after that many
    seconds, whichever is first: run and result in one request.
    """
    projects.check_new(caller, spec.project)
    if spec.schedule is not None:
        if wait:
            raise Invalid("a schedule has no result to wait for", field="wait")
        schedules: Schedules = request.app.state.schedules
        schedule = await schedules.create(
            "task",
            spec.model_dump(mode="json", context=REVEAL),
            name=spec.name,
            cron=spec.schedule,
            timezone=spec.timezone,
            catch_up=spec.catch_up,
        )
        return document(schedule, status_code=201)
    return document(await create_one(manager, spec, wait), status_code=201)


async def owned(manager: Manager, caller: TokenRecord, task_id: str) -> Task:
    """The task, if it is in one of the caller's projects; its 404 otherwise."""
    task = await manager.get(task_id)
    projects.check(caller, task.project, "task", task_id)
    return task


async def create_one(manager: Manager, spec: TaskSpec, wait: float) -> Task:
    """One task (not a schedule), held until it ends or ``wait`` seconds pass when started."""
    (task,) = await manager.submit([spec], batch=False)
    # past the bound of held answers, answered at once: the task is made (a 503 would
    # have the client make it again), and the client's next poll is told to wait
    if wait and task.started and manager.holds.free:
        task = await manager.wait(task.id, wait)
    return task


@router.post("/batch", status_code=201, response_model=TaskItems)
async def create_tasks(
    batch: TaskBatch, manager: ManagerDep, caller: CallerDep, request: Request
) -> Response:
    # The audit record names the batch, not its first task: left to itself it parsed the
    # whole answer for an id (2.6 % of `up`'s samples under `make bench`, 1,000 a call).
    projects_named = {spec.project for spec in batch.tasks}
    project = projects_named.pop() if len(projects_named) == 1 else None
    note(request.scope, resource_id=f"batch of {len(batch.tasks)}", project=project)
    for index, spec in enumerate(batch.tasks):
        if not projects.sees(caller, spec.project):
            raise NotFound(f"project {spec.project!r} not found", field=f"tasks[{index}].project")
        if spec.schedule is not None:
            raise Invalid(
                "schedule one task at a time with POST /tasks", field=f"tasks[{index}].schedule"
            )
    # (each task's text made once, for its row and this answer: ``model/task_json.py``)
    submitted = await manager.submit(batch.tasks)
    return Response(task_json.items(submitted), status_code=201, media_type=JSON)


#: A filter's text: at most a name's length, no NUL (no stored name or id holds one).
FilterText = Annotated[str | None, Query(max_length=MAX_NAME, pattern=r"^[^\x00]*$")]
Order = Literal["oldest", "newest"]


@router.get("", response_model=TaskPage)
async def list_tasks(
    manager: ManagerDep,
    caller: CallerDep,
    state: TaskState | None = None,
    name: Annotated[
        str | None,
        Query(
            max_length=MAX_NAME,
            pattern=r"^[^\x00]*$",
            description="names starting with this (`train` matches `train-2`, `training`)",
        ),
    ] = None,
    worker_id: FilterText = None,
    job_id: FilterText = None,
    workflow_id: FilterText = None,
    order: Annotated[Order, Query(description="oldest or newest first")] = "oldest",
    limit: Limit = 100,
    offset: Offset = 0,
    cursor: Annotated[
        str | None, Query(max_length=MAX_CURSOR, description="`next` of the page before")
    ] = None,
) -> Response:
    """Tasks matching every filter given (``state``, ``name`` prefix, ``worker_id``,
    ``job_id``, ``workflow_id``), oldest or newest first (``order``), ``limit`` a page;
    ``total`` counts every match and ``next`` is the ``cursor`` of the following page.

    A cursor page costs the same however deep it is; ``offset`` works too, but a deep one
    walks every task it skips. A request gives one or the other."""
    if cursor is not None and offset:
        raise Invalid("page with cursor or offset, not both", field="cursor")
    after = None if cursor is None else decode_cursor(cursor)
    newest_first = order == "newest"
    items, total = await manager.list_tasks(
        state=state,
        job_id=job_id,
        workflow_id=workflow_id,
        worker_id=worker_id,
        name=name or None,
        after=after,
        newest_first=newest_first,
        limit=limit + 1,
        offset=offset,
        projects=projects.visible(caller),
    )
    more = len(items) > limit
    items = items[:limit]
    last = items[-1] if more and items else None
    following = None if last is None else encode_cursor((last.created_at, last.id))
    return document(TaskPage(items=items, total=total, next=following))


@router.get("/counts", response_model=dict[TaskState, int])
async def count_tasks(manager: ManagerDep, caller: CallerDep) -> dict[str, int]:
    """How many tasks are in each state, every state named (0 included): one read of the
    store where a ``GET /tasks?state=S&limit=1`` per state was one each. Counts the
    caller's projects' tasks, as the list does."""
    return await manager.count_tasks(projects.visible(caller))


@router.get("/{task_id}", response_model=Task)
async def get_task(
    task_id: str,
    manager: ManagerDep,
    caller: CallerDep,
    wait: Wait = 0,
) -> Response:
    if projects.visible(caller) is not None:  # an admin sees all: no lookup
        await owned(manager, caller, task_id)
    return document(await manager.wait(task_id, wait))


@router.post("/{task_id}/retry", status_code=201, response_model=Task)
async def retry_task(task_id: str, manager: ManagerDep, caller: CallerDep) -> Response:
    """Run an ended task again: a new task (``retry_of`` names this one) with the same
    spec, secret env included, started at once. 409 while the task has not ended, and for
    a step of a workflow or job."""
    await owned(manager, caller, task_id)
    return document(await manager.retry_task(task_id), status_code=201)


@router.patch("/{task_id}", response_model=Task)
async def patch_task(
    task_id: str, patch: TaskPatch, manager: ManagerDep, caller: CallerDep
) -> Task:
    await owned(manager, caller, task_id)
    return await manager.patch_task(task_id, patch)


@router.delete("/{task_id}", status_code=204)
async def delete_task(task_id: str, manager: ManagerDep, caller: CallerDep) -> Response:
    await owned(manager, caller, task_id)
    await manager.delete_task(task_id)
    return Response(status_code=204)


@router.post("/{task_id}/start", response_model=Task)
async def start_task(task_id: str, manager: ManagerDep, caller: CallerDep) -> Task:
    await owned(manager, caller, task_id)
    return await manager.start_task(task_id)


@router.post("/{task_id}/stop", response_model=Task)
async def stop_task(task_id: str, manager: ManagerDep, caller: CallerDep) -> Task:
    await owned(manager, caller, task_id)
    return await manager.stop_task(task_id)


@router.get("/{task_id}/results", response_model=TaskResults)
async def task_results(task_id: str, manager: ManagerDep, caller: CallerDep) -> TaskResults:
    return (await owned(manager, caller, task_id)).results_view()


@router.get(
    "/{task_id}/logs",
    response_model=TaskLogs,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def task_logs(
    task_id: str, manager: ManagerDep, caller: CallerDep, follow: bool = False
) -> Response:
    """The task's stdout and stderr; with ``follow`` a ``text/event-stream`` of what it
    prints as it prints it, until it ends (docs/metrics.md, "Logs")."""
    task = await owned(manager, caller, task_id)
    if not follow:
        return document(task.logs_view())
    follower = manager.log_followers.add(task_id)
    if follower is None:
        raise Unavailable("too many followers of task logs; try again later")
    return StreamingResponse(
        follow_logs(manager, task, follower),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get("/{task_id}/metrics", response_model=UsageSeries)
async def task_metrics(
    task_id: str,
    manager: ManagerDep,
    caller: CallerDep,
    since: Since = None,
    until: Until = None,
    points: Points = 200,
) -> UsageSeries:
    """The task's usage samples (its monitoring profile says how often and how many)."""
    await owned(manager, caller, task_id)
    return series("task", task_id, manager.series.task(task_id), since, until, points)
