"""The fake runtime that manager and scheduler tests drive (conformance covers the rest)."""

from __future__ import annotations

import pytest

from edgeplane.errors import Conflict
from edgeplane.model import Limits
from edgeplane.runtimes import FakeRuntime, RunSpec


def spec(name: str, *, entrypoint: str = "", timeout: float | None = None) -> RunSpec:
    return RunSpec(
        task_id=f"task-{name}",
        attempt=2,
        runtime="fake",
        name=name,
        entrypoint=entrypoint,
        inputs=[name],
        limits=Limits(timeout_s=timeout),
    )


async def test_transient_failure_is_marked_transient() -> None:
    rt = FakeRuntime()
    outcome = await rt.wait(await rt.start(spec("transient"), None))
    assert (outcome.state, outcome.transient) == ("failed", True)


async def test_entrypoint_wins_over_name() -> None:
    rt = FakeRuntime()
    outcome = await rt.wait(await rt.start(spec("echo", entrypoint="fail"), None))
    assert outcome.state == "failed"


async def test_started_records_assignments_and_rejects_duplicates() -> None:
    rt = FakeRuntime()
    await rt.start(spec("sleep"), None)
    with pytest.raises(Conflict):
        await rt.start(spec("sleep"), None)
    assert [s.task_id for s in rt.started] == ["task-sleep"]
    await rt.close()


async def test_sleep_times_out_with_its_limit() -> None:
    rt = FakeRuntime()
    outcome = await rt.wait(await rt.start(spec("sleep", timeout=0.01), None))
    assert (outcome.state, outcome.error) == ("failed", "timeout after 0.01s")
