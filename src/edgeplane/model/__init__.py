"""Pydantic models shared by the API, the store and the wire."""

from edgeplane.model.page import Page
from edgeplane.model.task import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    Constraints,
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

__all__ = [
    "ACTIVE_STATES",
    "TERMINAL_STATES",
    "Capabilities",
    "Constraints",
    "Limits",
    "Page",
    "Runtime",
    "Task",
    "TaskLogs",
    "TaskPatch",
    "TaskResults",
    "TaskSpec",
    "TaskState",
    "Usage",
    "Worker",
    "WorkerState",
]
