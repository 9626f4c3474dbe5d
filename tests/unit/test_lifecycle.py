"""The pure task state machine."""

from __future__ import annotations

import pytest

from edgeplane.errors import Conflict
from edgeplane.manager import lifecycle
from edgeplane.model import Task
from edgeplane.protocol import TaskEvent


def scheduled(retries: int = 0) -> Task:
    task = lifecycle.start(Task(id="t", name="add", retries=retries), now=1.0)
    return lifecycle.assign(task, "w1", "local", now=2.0)


def event(state: str, attempt: int = 1, **fields: object) -> TaskEvent:
    return TaskEvent.model_validate({"task_id": "t", "attempt": attempt, "state": state, **fields})


def test_assign_numbers_attempts() -> None:
    task = scheduled()
    assert (task.state, task.worker_id, task.attempt) == ("scheduled", "w1", 1)


def test_running_then_completed() -> None:
    running = lifecycle.apply_event(scheduled(), event("running", ts=3.0), 3.0, 0.5)
    assert running is not None and running.state == "running" and running.started_at == 3.0
    done = lifecycle.apply_event(running, event("completed", results=[5]), 4.0, 0.5)
    assert done is not None and done.state == "completed" and done.results == [5]
    assert done.finished_at == 4.0


def test_duplicates_and_stale_attempts_are_ignored() -> None:
    done = lifecycle.apply_event(scheduled(), event("completed", results=[1]), 3.0, 0.5)
    assert done is not None
    assert lifecycle.apply_event(done, event("completed", results=[2]), 4.0, 0.5) is None
    assert lifecycle.apply_event(scheduled(), event("completed", attempt=7), 4.0, 0.5) is None


def test_permanent_failure_is_not_retried() -> None:
    failed = lifecycle.apply_event(scheduled(retries=3), event("failed", error="trap"), 3.0, 0.5)
    assert failed is not None and failed.state == "failed" and failed.error == "trap"


def test_transient_failure_retries_while_allowed() -> None:
    retried = lifecycle.apply_event(
        scheduled(retries=1), event("failed", error="flaky", transient=True), 3.0, 0.5
    )
    assert retried is not None and retried.state == "pending"
    assert retried.not_before == 3.5 and retried.worker_id is None
    again = lifecycle.assign(retried, "w2", "local", 4.0)
    assert again.attempt == 2
    final = lifecycle.apply_event(again, event("failed", attempt=2, transient=True), 5.0, 0.5)
    assert final is not None and final.state == "failed"


def test_a_failures_reason_code_becomes_the_tasks_reason() -> None:
    unreachable = {"error": "registry r:5000 unreachable", "reason": "registry_unreachable"}
    waiting = lifecycle.apply_event(
        scheduled(retries=1), event("failed", transient=True, **unreachable), 3.0, 0.5
    )
    assert waiting is not None and waiting.state == "pending"
    assert waiting.reason == "retrying after registry_unreachable: registry r:5000 unreachable"
    again = lifecycle.assign(waiting, "w2", "c", 4.0)
    failed = lifecycle.apply_event(
        again, event("failed", attempt=2, transient=True, **unreachable), 5.0, 0.5
    )
    assert failed is not None and failed.state == "failed"
    assert (failed.reason, failed.error) == ("registry_unreachable", unreachable["error"])
    missing = lifecycle.apply_event(
        scheduled(retries=3),
        event("failed", error="oci://r/x:1 not found", reason="artifact_not_found"),
        3.0,
        0.5,
    )
    assert missing is not None and (missing.state, missing.reason) == (
        "failed",
        "artifact_not_found",
    )


def test_lost_worker_fails_with_worker_lost_when_no_retries() -> None:
    lost = lifecycle.lose(scheduled(), "worker w1 went offline", 3.0, 0.5)
    assert lost.state == "failed" and lost.error == lifecycle.WORKER_LOST
    assert "w1" in (lost.reason or "")


def test_retries_minus_one_retries_forever() -> None:
    task = scheduled(retries=-1).model_copy(update={"attempt": 1000})
    assert lifecycle.lose(task, "gone", 3.0, 0.5).state == "pending"


def test_backoff_grows_and_is_capped() -> None:
    task = scheduled()
    assert lifecycle.backoff_s(task, 0.5) == 0.5
    assert lifecycle.backoff_s(task.model_copy(update={"attempt": 3}), 0.5) == 2.0
    assert lifecycle.backoff_s(task.model_copy(update={"attempt": 30}), 0.5) == 60.0


def test_cancel_is_terminal() -> None:
    cancelled = lifecycle.cancel(scheduled(), 9.0)
    assert cancelled.terminal and cancelled.finished_at == 9.0
    assert lifecycle.apply_event(cancelled, event("completed"), 10.0, 0.5) is None


@pytest.mark.parametrize("state", ["completed", "failed", "skipped", "cancelled"])
@pytest.mark.parametrize("started", [True, False])
def test_an_ended_task_never_starts_again(state: str, started: bool) -> None:
    ended = Task(id="t", state=state, started=started)  # type: ignore[arg-type]
    with pytest.raises(Conflict) as exc:
        lifecycle.start(ended, now=5.0)
    assert exc.value.status == 409 and exc.value.field == "id"


def test_only_a_task_not_started_can_change() -> None:
    new = Task(id="t", priority=1)
    assert lifecycle.patch(new, {"priority": 9}, now=2.0).priority == 9
    for task in (lifecycle.start(new, now=1.0), lifecycle.cancel(new, now=1.0)):
        with pytest.raises(Conflict):
            lifecycle.patch(task, {"priority": 9}, now=2.0)


def test_a_lost_members_real_outcome_replaces_the_loss() -> None:
    lost = lifecycle.lose(scheduled(retries=0), "w1 missed 3 heartbeats", 3.0, 0.5)
    assert (lost.state, lost.error) == ("failed", "worker_lost")
    truth = lifecycle.late_end(lost, event("completed", results=[5]), 4.0)
    assert truth is not None and truth.state == "completed" and truth.results == [5]
    assert truth.error is None and "declared lost" in (truth.reason or "")


def test_a_late_report_of_another_attempt_or_end_changes_nothing() -> None:
    lost = lifecycle.lose(scheduled(retries=0), "gone", 3.0, 0.5)
    assert lifecycle.late_end(lost, event("completed", attempt=2), 4.0) is None
    assert lifecycle.late_end(lost, event("running"), 4.0) is None
    retried = lifecycle.lose(scheduled(retries=1), "gone", 3.0, 0.5)  # pending: tried again
    assert lifecycle.late_end(retried, event("completed"), 4.0) is None
    done = lifecycle.apply_event(scheduled(), event("completed", results=[1]), 3.0, 0.5)
    assert done is not None and lifecycle.late_end(done, event("failed"), 4.0) is None


# --- retry ---------------------------------------------------------------------------------

#: Fields a retry starts afresh (everything else, RETRY_KEEPS, it copies).
RETRY_RESETS = frozenset(Task.model_fields) - lifecycle.RETRY_KEEPS


def ended(state: str = "failed", **fields: object) -> Task:
    """A task that ran with every field set away from its default."""
    task = Task.model_validate(
        {
            "id": "old",
            "project": "p",
            "name": "train",
            "runtime": "host",
            "command": ["sh", "-c", "exit 1"],
            "env": {"A": "1"},
            "secret_env": {"KEY": "s3cret"},
            "limits": {"timeout_s": 5},
            "retries": 2,
            "priority": 70,
            "constraints": {"labels": {"gpu": "yes"}},
            "metadata": {"owner": "ada"},
            "pinned_worker": "w2",
            "schedule_id": "s1",
            "state": state,
            "reason": "exit 1",
            "started": True,
            "worker_id": "w2",
            "cluster_id": "local",
            "attempt": 3,
            "results": [1],
            "error": "boom",
            "exit_code": 1,
            "stdout": "out",
            "stderr": "err",
            "created_at": 1.0,
            "updated_at": 9.0,
            "started_at": 2.0,
            "finished_at": 9.0,
            "not_before": 8.0,
            **fields,
        }
    )
    return task


@pytest.mark.parametrize("state", ["completed", "failed", "cancelled", "skipped"])
def test_a_retry_runs_the_same_spec_afresh(state: str) -> None:
    old = ended(state)
    new = lifecycle.retry(old, "new", 50.0, "local")
    fresh = Task(id="new")
    for name in lifecycle.RETRY_KEEPS:
        assert getattr(new, name) == getattr(old, name), name
    assert new.secret_env == {"KEY": "s3cret"}  # the value itself, not the mask
    assert (new.id, new.retry_of, new.started, new.state) == ("new", "old", True, "pending")
    assert (new.created_at, new.updated_at, new.cluster_id) == (50.0, 50.0, "local")
    for name in RETRY_RESETS - {"id", "retry_of", "started", "created_at", "updated_at"}:
        if name != "cluster_id":
            assert getattr(new, name) == getattr(fresh, name), name


def test_every_task_field_is_kept_or_reset_by_a_retry_on_purpose() -> None:
    """A new field of Task must be put in RETRY_KEEPS or left out of it on purpose: this
    list changes with it (a spec field forgotten would silently not be retried)."""
    assert {
        "id",
        "state",
        "reason",
        "started",
        "depends_on",
        "inputs_from",
        "job_id",
        "workflow_id",
        "schedule_id",
        "retry_of",
        "worker_id",
        "cluster_id",
        "attempt",
        "results",
        "error",
        "exit_code",
        "stdout",
        "stderr",
        "created_at",
        "updated_at",
        "started_at",
        "finished_at",
        "not_before",
        "placements",
        "rejected_by",
        "endpoints",
    } == RETRY_RESETS


@pytest.mark.parametrize("state", ["pending", "scheduled", "running"])
def test_only_an_ended_task_is_retried(state: str) -> None:
    with pytest.raises(Conflict, match="only an ended task") as refused:
        lifecycle.retry(ended(state), "new", 50.0, None)
    assert refused.value.field == "id"


@pytest.mark.parametrize(("field", "kind"), [("workflow_id", "workflow"), ("job_id", "job")])
def test_a_step_of_a_run_is_not_retried_alone(field: str, kind: str) -> None:
    with pytest.raises(Conflict, match=f"submit the {kind} again"):
        lifecycle.retry(ended(**{field: "r1"}), "new", 50.0, None)
