"""Pydantic models shared by the API, the store and the wire."""

from edgeplane.model.page import Page
from edgeplane.model.task import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    CatchUp,
    Constraints,
    InputRef,
    Limits,
    Runtime,
    Task,
    TaskLogs,
    TaskPatch,
    TaskResults,
    TaskSpec,
    TaskState,
)
from edgeplane.model.worker import Capabilities, Usage, Worker, WorkerState
from edgeplane.model.workflow import (
    TERMINAL_WORKFLOW_STATES,
    JobMode,
    JobSpec,
    Schedule,
    Workflow,
    WorkflowSpec,
    WorkflowState,
)

__all__ = [
    "ACTIVE_STATES",
    "TERMINAL_STATES",
    "TERMINAL_WORKFLOW_STATES",
    "Capabilities",
    "CatchUp",
    "Constraints",
    "InputRef",
    "JobMode",
    "JobSpec",
    "Limits",
    "Page",
    "Runtime",
    "Schedule",
    "Task",
    "TaskLogs",
    "TaskPatch",
    "TaskResults",
    "TaskSpec",
    "TaskState",
    "Usage",
    "Worker",
    "WorkerState",
    "Workflow",
    "WorkflowSpec",
    "WorkflowState",
]
