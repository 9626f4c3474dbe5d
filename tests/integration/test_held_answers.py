"""The bound on answers held open (long polls, ``max_held_answers``): past it a new long
poll is refused with 503 and Retry-After before anything is registered, the held ones
go on, a create-and-wait is answered at once rather than refused (the task is made), and
the clients wait as told and ask again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeplane.client import AsyncClient
from edgeplane.model.task import TERMINAL_STATES
from edgeplane.roles.up import Stack
from stack_fixtures import TOKEN, start_stack


@pytest.fixture
async def two_held(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    store = f"sqlite:///{tmp_path / 'db.sqlite'}"
    async for pair in start_stack(
        tmp_path, fast_broker_url, store, unique_domain, max_held_answers=2
    ):
        yield pair


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def gated(name: str, gate: Path) -> dict[str, Any]:
    """A host task that runs until ``gate`` exists."""
    script = f"while [ ! -e {gate} ]; do sleep 0.05; done"
    return {"name": name, "runtime": "host", "command": ["sh", "-c", script], "start": True}


async def test_past_the_bound_a_long_poll_is_503_and_the_client_asks_again(
    two_held: tuple[Stack, httpx.AsyncClient], tmp_path: Path
) -> None:
    stack, http = two_held
    holds = stack.control.manager.holds
    gate = tmp_path / "gate"
    held: list[asyncio.Task[httpx.Response]] = []
    try:
        created = await http.post("/tasks", json=gated("held", gate))
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]
        held += [
            asyncio.create_task(http.get(f"/tasks/{task_id}", params={"wait": 30}))
            for _ in range(2)
        ]
        await until(lambda: holds.held == 2, "two answers held")

        refused = await http.get(f"/tasks/{task_id}", params={"wait": 30})
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["title"] == "Busy"
        assert "max_held_answers" in refused.json()["detail"]
        # not held: answered as ever
        assert (await http.get(f"/tasks/{task_id}")).status_code == 200
        # create-and-wait: made and answered at once (a 503 would have it made twice)
        made = await http.post("/tasks", params={"wait": 30}, json=gated("made", gate))
        assert made.status_code == 201, made.text
        assert made.json()["state"] not in TERMINAL_STATES, made.text
        assert holds.held == 2

        async with AsyncClient(stack.control.url, TOKEN) as client:
            waiting = asyncio.create_task(client.wait(task_id, timeout=60))
            await until(lambda: holds.refused >= 2, "the client refused once")
            assert not waiting.done()  # it waits as told, and asks again
            gate.touch()
            ended = await waiting
        assert ended.state == "completed"
        assert [(await h).json()["state"] for h in held] == ["completed", "completed"]
        await until(lambda: holds.held == 0, "every hold released")
    finally:  # nothing left held or running for the stack's stop
        gate.touch()
        for answer in held:
            answer.cancel()

    text = (await http.get(stack.control.url + "/metrics")).text
    found = {f.name: f.samples[0].value for f in text_string_to_metric_families(text) if f.samples}
    assert found["edgeplane_held_answers"] == 0
    assert found["edgeplane_held_answers_refused"] >= 2
