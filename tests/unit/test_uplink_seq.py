"""A cluster's heartbeat to the root claims a command (its ``seq``) only once every task
of it is held: the root counts a task of a claimed command missing from ``active`` as
lost (``membership.on_alive``). Admission awaits, so a heartbeat can go out in the middle
of a command; it made the root fail tasks that then completed (bench.scale --hierarchy).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edgeplane.config import Settings
from edgeplane.manager.uplink import Uplink
from edgeplane.model import Task
from edgeplane.protocol import Assignment, StartTasks, encode


def _assignment(task_id: str) -> Assignment:
    return Assignment(task_id=task_id, attempt=1, runtime="wasm")


async def test_the_heartbeat_claims_a_command_only_once_its_tasks_are_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(cluster_id="site-a", data_dir=tmp_path)
    submitted: list[Task] = []

    async def submit(tasks: list[Task], origin: str) -> None:
        submitted.extend(tasks)

    facade: Any = SimpleNamespace(settings=settings, broker_url="mqtt://127.0.0.1:1", submit=submit)
    uplink = Uplink(facade, "mqtt://127.0.0.1:1")
    admitting = asyncio.Event()
    release = asyncio.Event()

    async def admit(spec: Assignment) -> list[Task]:  # the awaits admission makes
        admitting.set()
        await release.wait()
        local = f"{spec.task_id}.local"
        uplink._owned[local] = (spec.task_id, spec.attempt)
        return [Task(id=local)]

    monkeypatch.setattr(uplink, "_cannot_run", lambda spec: None)
    monkeypatch.setattr(uplink, "_admit", admit)
    command = StartTasks(tasks=[_assignment("t1"), _assignment("t2")], epoch="E", seq=7)
    topic = uplink.topics.cmd("site-a")
    handling = asyncio.create_task(uplink._on_message(topic, encode("task.start", command)))
    await asyncio.wait_for(admitting.wait(), 10)

    during = uplink.alive()
    assert during.epoch == "E" and during.seq < 7  # not claimed: t1, t2 are not held yet

    release.set()
    await asyncio.wait_for(handling, 10)
    after = uplink.alive()
    assert after.seq == 7
    assert set(after.active) == {"t1", "t2"}
    assert [task.id for task in submitted] == ["t1.local", "t2.local"]
