"""What a starting worker makes of the handles its previous process left
(worker/recovery.py), with a fake runtime that says what it finds of each attempt."""

from __future__ import annotations

from typing import Any, ClassVar

from edgeplane.clock import ManualClock
from edgeplane.protocol import TaskEvent
from edgeplane.runtimes import FakeRuntime, Handle, RunSpec
from edgeplane.worker.handles import HandleRecord
from edgeplane.worker.recovery import NOTHING_LEFT, recover


class Leftovers(FakeRuntime):
    """``state["left"]``: "running" (still runs), "ended" (completed meanwhile) or
    nothing (nothing left of it)."""

    name: ClassVar[str] = "host"
    recoverable: ClassVar[bool] = True

    async def recover(self, state: dict[str, Any]) -> Handle | None:
        left = state.get("left")
        if left is None:
            return None
        behaviour = "sleep" if left == "running" else "echo"
        spec = RunSpec(task_id=state["id"], attempt=1, runtime="host", name=behaviour)
        return await self.start(spec, None)


def record(task_id: str, left: str | None, final: TaskEvent | None = None) -> HandleRecord:
    spec = RunSpec(task_id=task_id, attempt=1, runtime="host", command=["x"])
    state: dict[str, Any] = {"id": task_id} | ({"left": left} if left else {})
    return HandleRecord(spec=spec, state=state, started_at=1.0, final=final)


async def test_running_attempts_are_resumed_the_others_get_a_final_event() -> None:
    runtime = Leftovers()
    handed_over = TaskEvent(task_id="acked-not", attempt=1, state="completed")
    found = await recover(
        [record("runs", "running"), record("gone", None), record("acked-not", None, handed_over)],
        {"host": runtime},
        {},
        ManualClock(start=7.0),
    )
    assert [(r.record.spec.task_id, r.handle.task_id) for r in found.resumed] == [("runs", "runs")]
    assert runtime.inspect(found.resumed[0].handle)["running"] is True
    finals = {r.spec.task_id: r.final for r in found.finals}
    assert finals["acked-not"] == handed_over  # sent again as it was
    gone = finals["gone"]
    assert gone is not None
    assert (gone.state, gone.error, gone.transient) == ("failed", NOTHING_LEFT, False)
    assert (gone.attempt, gone.started_at, gone.ts) == (1, 1.0, 7.0)


async def test_attempts_of_a_runtime_no_longer_enabled_are_stopped() -> None:
    cleaner = Leftovers()
    found = await recover(
        [record("runs", "running"), record("ended", "ended"), record("gone", None)],
        {},
        {"host": cleaner},
        ManualClock(),
    )
    assert found.resumed == []
    finals = {r.spec.task_id: r.final for r in found.finals}
    runs, ended, gone = finals["runs"], finals["ended"], finals["gone"]
    assert runs is not None and ended is not None and gone is not None
    # stopped: it did not get to finish, like a task of a lost worker (retried if it may)
    assert (runs.state, runs.transient) == ("failed", True)
    assert "not enabled on this worker any more" in (runs.error or "")
    assert cleaner.inspect(Handle("runs", 1, "host"))["running"] is False
    assert ended.state == "completed"  # it ended by itself: its own outcome
    assert gone.error == NOTHING_LEFT


async def test_without_a_runtime_to_stop_it_the_attempt_is_reported_failed() -> None:
    found = await recover([record("runs", "running")], {}, {}, ManualClock())
    [only] = found.finals
    assert only.final is not None
    assert (only.final.state, only.final.transient) == ("failed", True)
    assert "could not be stopped" in (only.final.error or "")
