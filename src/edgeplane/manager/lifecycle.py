"""Pure task state transitions (DESIGN §2). No I/O: each function returns a new Task.

pending → scheduled → running → completed | failed | cancelled; pending → cancelled.
A transient failure (worker lost, artifact missing, transient runtime error) goes back to
``pending`` while retries remain; ``retries = -1`` retries forever.
"""

from __future__ import annotations

from typing import Any

from edgeplane.errors import Conflict
from edgeplane.model import Placement, Task
from edgeplane.protocol import TaskEvent

WORKER_LOST = "worker_lost"


def retries_left(task: Task) -> bool:
    """Whether another attempt is allowed after attempt number ``task.attempt``."""
    return task.retries < 0 or task.attempt <= task.retries


def backoff_s(task: Task, base_s: float) -> float:
    """Exponential backoff before the next attempt, capped at 60 s."""
    return float(min(60.0, base_s * (2 ** max(0, task.attempt - 1))))


def start(task: Task, now: float) -> Task:
    """``task`` started; :class:`Conflict` when it has ended (cancelled before it started,
    or finished): an ended task never runs again, make a new one."""
    if task.terminal:
        raise Conflict(f"task {task.id} has ended ({task.state}); it cannot start", field="id")
    return task.model_copy(update={"started": True, "reason": None, "updated_at": now})


def patch(task: Task, changes: dict[str, Any], now: float) -> Task:
    """``task`` with ``changes``; :class:`Conflict` once it has started or ended."""
    if task.started or task.terminal:
        what = "ended" if task.terminal else "started"
        raise Conflict(
            f"task {task.id} has {what} ({task.state}); only a task not started yet can change",
            field="id",
        )
    return task.model_copy(update={**changes, "updated_at": now})


def assign(task: Task, worker_id: str, cluster_id: str, now: float) -> Task:
    return task.model_copy(
        update={
            "state": "scheduled",
            "reason": None,
            "worker_id": worker_id,
            "cluster_id": cluster_id,
            "rejected_by": [],
            "attempt": task.attempt + 1,
            "results": None,
            "error": None,
            "exit_code": None,
            "endpoints": [],
            "updated_at": now,
        }
    )


def place(task: Task, cluster_id: str, now: float) -> Task:
    """The root sent ``task`` to a cluster; the cluster's scheduler picks the worker."""
    placed = assign(task, "", cluster_id, now)
    history = [*task.placements, Placement(cluster_id=cluster_id, outcome="placed", at=now)]
    return placed.model_copy(update={"worker_id": None, "placements": history})


def reject(task: Task, cluster_id: str, why: str, now: float) -> Task:
    """A cluster refused ``task``: back to pending, not to be offered to it again until its
    aggregate changes. A rejection does not use up a retry."""
    history = [
        *task.placements,
        Placement(cluster_id=cluster_id, outcome="rejected", reason=why, at=now),
    ]
    return task.model_copy(
        update={
            "state": "pending",
            "reason": f"rejected by {cluster_id}: {why}",
            "cluster_id": None,
            "worker_id": None,
            "attempt": task.attempt - 1,
            "rejected_by": [*task.rejected_by, cluster_id],
            "placements": history,
            "updated_at": now,
        }
    )


def wait_reason(task: Task, reason: str, now: float) -> Task:
    return task.model_copy(update={"reason": reason, "updated_at": now})


def cancel(task: Task, now: float, reason: str = "stopped by user") -> Task:
    return task.model_copy(
        update={"state": "cancelled", "reason": reason, "updated_at": now, "finished_at": now}
    )


def _retry_or_fail(task: Task, error: str, reason: str, now: float, backoff_base_s: float) -> Task:
    if retries_left(task):
        return task.model_copy(
            update={
                "state": "pending",
                "reason": f"retrying after {error}: {reason}",
                "worker_id": None,
                "error": error,
                "updated_at": now,
                "not_before": now + backoff_s(task, backoff_base_s),
            }
        )
    return task.model_copy(
        update={
            "state": "failed",
            "error": error,
            "reason": reason,
            "updated_at": now,
            "finished_at": now,
        }
    )


def lose(task: Task, reason: str, now: float, backoff_base_s: float) -> Task:
    """The worker (or, at the root, the cluster) running ``task`` is gone: retry elsewhere
    or fail with ``worker_lost``."""
    if task.placements and task.cluster_id and task.state in ("scheduled", "running"):
        lost = Placement(cluster_id=task.cluster_id, outcome="lost", reason=reason, at=now)
        task = task.model_copy(update={"placements": [*task.placements, lost]})
    return _retry_or_fail(task, WORKER_LOST, reason, now, backoff_base_s)


def late_end(task: Task, event: TaskEvent, now: float) -> Task | None:
    """A member declared lost comes back and reports how an attempt really ended. When the
    task failed ``worker_lost`` in that very attempt (no retries were left, so it was not
    tried again), the report is the truth and replaces the loss: the root and a cluster,
    or a manager and a worker, end up agreeing on what happened. None otherwise (the task
    was tried again, or ended some other way: the report is stale)."""
    if task.state != "failed" or task.error != WORKER_LOST or event.attempt != task.attempt:
        return None
    if event.state not in ("completed", "failed", "cancelled"):
        return None
    running = task.model_copy(update={"state": "running", "error": None, "finished_at": None})
    ended = apply_event(running, event, now, 0.0)
    if ended is None or not ended.terminal:
        return None
    return ended.model_copy(update={"reason": "reported by its worker after it was declared lost"})


def apply_event(task: Task, event: TaskEvent, now: float, backoff_base_s: float) -> Task | None:
    """The task after a worker's event, or None when the event is stale or a duplicate."""
    if task.terminal or event.attempt != task.attempt or task.state == "pending":
        return None
    where = {} if event.worker_id is None else {"worker_id": event.worker_id}
    if event.state == "rejected":
        return reject(task, task.cluster_id or "", event.error or "no reason given", now)
    if event.state == "scheduled":
        # A cluster placed the task on a worker, or took it back from a lost one.
        if task.state == "scheduled" and task.worker_id == event.worker_id:
            return None
        return task.model_copy(
            update={"state": "scheduled", "worker_id": event.worker_id, "updated_at": now}
        )
    if event.state == "running":
        if task.state == "running" and (not where or task.worker_id == event.worker_id):
            return None
        return task.model_copy(
            update={
                "state": "running",
                "started_at": task.started_at if task.state == "running" else event.ts or now,
                "endpoints": event.endpoints,
                "updated_at": now,
                **where,
            }
        )
    logs: dict[str, object] = {
        "stdout": event.stdout,
        "stderr": event.stderr,
        "exit_code": event.exit_code,
        **where,
    }
    if task.state == "scheduled" and event.started_at is not None:
        logs["started_at"] = event.started_at  # its "running" event was folded into this one
    if event.state == "completed":
        return task.model_copy(
            update={
                "state": "completed",
                "results": event.results,
                "error": None,
                "reason": None,
                "updated_at": now,
                "finished_at": now,
                **logs,
            }
        )
    if event.state == "failed" and event.transient:
        error = event.error or "transient failure"
        retried = _retry_or_fail(task, error, "", now, backoff_base_s)
        if event.reason:
            # The code first, so a waiting task says what it waits out
            # ("retrying after registry_unreachable: …") and a failed one why it failed.
            waiting = retried.state == "pending"
            reason = f"retrying after {event.reason}: {error}" if waiting else event.reason
            logs["reason"] = reason
        return retried.model_copy(update=logs)
    state = "cancelled" if event.state == "cancelled" else "failed"
    if state == "failed" and event.reason:
        logs["reason"] = event.reason
    return task.model_copy(
        update={
            "state": state,
            "results": event.results,
            "error": event.error,
            "updated_at": now,
            "finished_at": now,
            **logs,
        }
    )


def fail(task: Task, error: str, reason: str, now: float) -> Task:
    """``task`` failed before any attempt ran (its module could not be had)."""
    return task.model_copy(
        update={
            "state": "failed",
            "error": error,
            "reason": reason,
            "updated_at": now,
            "finished_at": now,
        }
    )


#: What a retry copies from the task it retries: what the user asked for (the spec, with
#: the module and images pinned at admission, so the copy runs the same code).
RETRY_KEEPS = frozenset(
    {
        "project",
        "name",
        "runtime",
        "mode",
        "export",
        "artifact",
        "image_url",
        "inputs",
        "cli_args",
        "env",
        "secret_env",
        "command",
        "image",
        "limits",
        "retries",
        "priority",
        "constraints",
        "run_if",
        "daemon",
        "monitoring",
        "metadata",
        "pinned_worker",
        "pinned_cluster",
        "network",
        "ports",
        "healthcheck",
    }
)


def retry(task: Task, task_id: str, now: float, cluster_id: str | None) -> Task:
    """A new started task ``task_id`` running what the ended ``task`` ran, linked to it by
    ``retry_of``; every other field (state, attempts, results, output, placement) starts
    afresh. :class:`Conflict` when ``task`` has not ended (stop it first) or is a step of
    a workflow or job (its place in the run is taken: submit the run again).
    ``cluster_id``: the manager's cluster (None at the root), as admission sets it."""
    if not task.terminal:
        raise Conflict(
            f"task {task.id} is {task.state}: only an ended task can be retried (stop it first)",
            field="id",
        )
    run = task.workflow_id or task.job_id
    if run is not None:
        kind = "workflow" if task.workflow_id else "job"
        raise Conflict(
            f"task {task.id} is a step of {kind} {run}: submit the {kind} again to rerun it",
            field="id",
        )
    kept = {name: getattr(task, name) for name in RETRY_KEEPS}
    return Task(
        **kept,
        id=task_id,
        started=True,
        retry_of=task.id,
        cluster_id=cluster_id,
        created_at=now,
        updated_at=now,
    )
