"""The worker keeps an attempt's handle record until its runtime has released the attempt,
even when the manager acks the final event first: a worker killed in between finds the
record at its restart and releases the attempt then (nothing of it is left behind)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar

import pytest

from edgeplane.protocol import AckEvents, Assignment, EventKey, encode
from edgeplane.runtimes import FakeRuntime, Handle
from edgeplane.worker import WorkerAgent, WorkerOptions

pytestmark = pytest.mark.timeout(30)


class SlowRelease(FakeRuntime):
    """Attempts outlive the worker (records are kept), and releasing waits for ``gate``."""

    name: ClassVar[str] = "host"
    recoverable: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.releasing = asyncio.Event()
        self.released: list[tuple[str, int]] = []

    async def release(self, handle: Handle) -> None:
        self.releasing.set()
        await self.gate.wait()
        await super().release(handle)
        self.released.append((handle.task_id, handle.attempt))


async def test_an_ack_before_the_release_keeps_the_record_until_it_is_done(
    tmp_path: Path,
) -> None:
    runtime = SlowRelease()
    options = WorkerOptions(worker_id="w1", broker_url="mqtt://127.0.0.1:1", data_dir=tmp_path)
    agent = WorkerAgent(options, {"host": runtime})
    agent._accept(Assignment(task_id="t1", attempt=1, runtime="host", name="echo"))
    await asyncio.wait_for(runtime.releasing.wait(), 10)
    [record] = agent.handles.load()
    assert record.final is not None and record.final.state == "completed"  # saved first

    ack = AckEvents(keys=[EventKey(task_id="t1", attempt=1)])
    await agent._on_message(agent.topics.cmd("w1"), encode("task.ack", ack))
    assert agent.events.unacked_tasks() == set()  # no longer re-sent
    assert [r.key for r in agent.handles.load()] == [("t1", 1)]  # but still on disk

    runtime.gate.set()
    while agent.handles.load():  # noqa: ASYNC110 - the job ends on its own
        await asyncio.sleep(0.01)
    assert runtime.released == [("t1", 1)]
    assert agent._releasing == {}
