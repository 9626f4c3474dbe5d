"""A worker that cannot run one task of a ``task.start`` fails that task and runs the
others: the real stack (`running_stack`) on the machine's Mosquitto."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest

import wasm_fixtures
from edgeplane.config import Settings
from edgeplane.model import Limits, TaskSpec
from edgeplane.roles.up import running_stack

pytestmark = pytest.mark.timeout(90)

ADD = base64.b64encode(wasm_fixtures.add_wasm()).decode()


async def test_one_bad_assignment_fails_alone(
    tmp_path: Path, mosquitto_url: str, unique_domain: str
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        broker=mosquitto_url,
        store=f"sqlite:///{tmp_path / 'db.sqlite'}",
        port=0,
        workers=1,
        domain=unique_domain,
        admin_token="t",
    )
    async with running_stack(settings) as stack:
        manager = stack.control.manager
        worker = stack.workers[0]
        await asyncio.wait_for(worker.registered.wait(), 20)
        specs = [TaskSpec(name="add", file=ADD, inputs=[n, 1], start=True) for n in range(40)]
        # What the API refuses (422) but a task stored before limits had ranges still
        # carries: the manager sends it along with the others in one command.
        specs[17] = specs[17].model_copy(update={"limits": Limits.model_construct(fuel=2**64)})
        tasks = await manager.submit(specs)
        assert manager.stats.dispatched == 40  # in one command: the worker takes slots x 4

        ended = await asyncio.gather(*(manager.wait(t.id, 30) for t in tasks))
        bad = ended.pop(17)
        assert bad.state == "failed", bad
        assert bad.error is not None and "limits.fuel" in bad.error, bad.error
        assert [t.state for t in ended] == ["completed"] * 39
        assert [t.results for t in ended] == [[n + 1] for n in range(40) if n != 17]
        assert worker.stats.bad_messages == 0
