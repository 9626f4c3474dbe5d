"""The pending queue: dispatch order, lazy removal, backoff."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edgeplane.manager.queue import PendingQueue, demand_of
from edgeplane.model import Task
from edgeplane.model.task import NO_CONSTRAINTS, Constraints


def task(task_id: str, priority: int = 50, created: float = 0.0, not_before: float = 0.0) -> Task:
    return Task(id=task_id, priority=priority, created_at=created, not_before=not_before)


def test_priority_then_age() -> None:
    queue = PendingQueue()
    for t in (task("old", created=1), task("new", created=2), task("urgent", 90, created=3)):
        queue.put(t)
    assert [t.id for t in queue.candidates(now=10, limit=10).due] == ["urgent", "old", "new"]
    assert [t.id for t in queue.candidates(now=10, limit=2).due] == ["urgent", "old"]


def test_popped_tasks_vanish_and_replacing_keeps_one_entry() -> None:
    queue = PendingQueue()
    queue.put(task("a"))
    queue.put(task("a").model_copy(update={"reason": "busy"}))
    queue.put(task("b", created=1))
    assert queue.pop("b") is not None
    due = queue.candidates(now=0, limit=10).due
    assert [(t.id, t.reason) for t in due] == [("a", "busy")]
    assert len(queue) == 1 and "a" in queue and queue.pop("zzz") is None


def test_backing_off_tasks_wait_and_report_when_due() -> None:
    queue = PendingQueue()
    queue.put(task("later", not_before=5.0))
    queue.put(task("now", created=1))
    first = queue.candidates(now=1.0, limit=10)
    assert [t.id for t in first.due] == ["now"] and first.next_due == 5.0
    assert [t.id for t in queue.candidates(now=6.0, limit=10).due] == ["later", "now"]


@given(
    runtime=st.sampled_from(["wasm", "container", "host"]),
    priority=st.integers(0, 100),
    pinned=st.sampled_from([None, "w1"]),
    cluster=st.sampled_from([None, "east"]),
    artifact=st.sampled_from([None, "ab" * 32]),
    rejected=st.sampled_from([[], ["east"]]),
)
def test_a_task_without_constraints_is_demanded_as_with_equal_ones(
    runtime: str,
    priority: int,
    pinned: str | None,
    cluster: str | None,
    artifact: str | None,
    rejected: list[str],
) -> None:
    # demand_of's shortcut for the shared NO_CONSTRAINTS must build what the general
    # path builds from an equal Constraints object that is not the shared one
    task = Task(
        id="t",
        name="x",
        runtime=runtime,
        priority=priority,
        pinned_worker=pinned,
        pinned_cluster=cluster,
        artifact=artifact,
        rejected_by=rejected,
        created_at=3.0,
    )
    assert task.constraints is NO_CONSTRAINTS
    general = task.model_copy(update={"constraints": Constraints()})
    assert general.constraints is not NO_CONSTRAINTS
    assert demand_of(task) == demand_of(general)
