"""Jobs, workflows and schedules: what users send and the stored documents."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializationInfo, field_serializer

from edgeplane.limits import MAX_RUN_TASKS
from edgeplane.model.bounds import Cron, JsonObject, Name, Project, Timezone
from edgeplane.model.secrets import redact_template, revealing
from edgeplane.model.task import CatchUp, Task, TaskSpec

JobMode = Literal["parallel", "sequential", "dag"]
WorkflowState = Literal["pending", "running", "completed", "failed", "cancelled"]
WorkflowKind = Literal["workflow", "job"]

TERMINAL_WORKFLOW_STATES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class WorkflowSpec(BaseModel):
    """``POST /workflows``: tasks linked by ``depends_on`` (names or ids) and ``run_if``."""

    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True)

    name: Name = ""
    #: the run's project, which its tasks are in too (theirs is ignored)
    project: Project = "default"
    tasks: list[TaskSpec] = Field(min_length=1, max_length=MAX_RUN_TASKS)
    fail_fast: bool = False
    start: bool = True
    schedule: Cron | None = None
    timezone: Timezone = "UTC"
    catch_up: CatchUp = "last"
    metadata: JsonObject = Field(default_factory=dict)


class JobSpec(WorkflowSpec):
    """``POST /jobs``: ``parallel`` starts all, ``sequential`` runs in list order and stops at
    the first failure, ``dag`` follows ``depends_on``."""

    mode: JobMode = "parallel"


class Workflow(BaseModel):
    """A job or a workflow run; ``tasks`` is filled in API answers, not stored."""

    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True)

    id: str
    #: the project it belongs to (docs/security.md): who may see and touch it
    project: str = "default"
    kind: WorkflowKind = "workflow"
    name: str = ""
    mode: JobMode = "dag"
    state: WorkflowState = "pending"
    reason: str | None = None
    fail_fast: bool = False
    started: bool = False
    #: task ids in request order
    task_ids: list[str] = Field(default_factory=list)
    #: task name → id, for names given in the request
    names: dict[str, str] = Field(default_factory=dict)
    schedule_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float | None = None
    tasks: list[Task] = Field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_WORKFLOW_STATES


ScheduleKind = Literal["task", "job"]


class Schedule(BaseModel):
    """A cron schedule of a task or a job; each slot fires once (run id ``id:slot``)."""

    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True)

    id: str
    #: the project it belongs to (docs/security.md): who may see and touch it
    project: str = "default"
    kind: ScheduleKind
    name: str = ""
    cron: str
    timezone: str = "UTC"
    catch_up: CatchUp = "last"
    #: the task or job body each run is created from (without ``schedule``)
    spec: dict[str, Any] = Field(default_factory=dict)
    #: the first slot not fired yet (while paused: the first one the pause held back)
    next_run: float | None = None
    #: paused: fires nothing until resumed; then its ``catch_up`` policy decides which of
    #: the slots missed meanwhile still run, as after a manager was down
    paused: bool = False
    last_slot: float | None = None
    runs: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0

    @field_serializer("spec")
    def _redacted(self, spec: dict[str, Any], info: SerializationInfo) -> dict[str, Any]:
        """The template's ``secret_env`` values are ``***`` unless revealed (the store)."""
        return spec if revealing(info) else redact_template(spec)
