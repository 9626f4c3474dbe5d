"""``GET /api/v1/events`` on the real stack: authenticated, and every change as it commits
(a task's states, a worker drained, a workflow, a schedule deleted)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeplane.roles.up import Stack
from stack_fixtures import start_stack


@pytest.fixture
async def stack(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    async for pair in start_stack(
        tmp_path, fast_broker_url, f"sqlite:///{tmp_path / 'db.sqlite'}", unique_domain
    ):
        yield pair


async def events(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    event = ""
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            event = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            yield event, json.loads(line.removeprefix("data:"))


async def until(
    stream: AsyncIterator[tuple[str, dict[str, Any]]], event_name: str, **fields: Any
) -> dict[str, Any]:
    async for event, data in stream:
        if event == event_name and all(data.get(k) == v for k, v in fields.items()):
            return data
    raise AssertionError(f"the stream ended before a {event_name} with {fields}")


async def test_the_stream_needs_a_token(stack: tuple[Stack, httpx.AsyncClient]) -> None:
    _, http = stack
    refused = await http.get("/events", headers={"Authorization": "Bearer nope"})
    assert refused.status_code == 401
    assert refused.headers["content-type"].startswith("application/problem+json")


async def test_changes_arrive_as_they_commit(stack: tuple[Stack, httpx.AsyncClient]) -> None:
    control, http = stack
    async with http.stream("GET", "/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = events(response)
        assert (await anext(stream))[0] == "hello"

        body = {"name": "hi", "runtime": "host", "command": ["echo", "hi"], "start": True}
        created = (await http.post("/tasks", json=body)).json()
        done = await asyncio.wait_for(
            until(stream, "task", id=created["id"], state="completed"), 30
        )
        assert "stdout" not in done and "results" not in done  # the stream stays light

        worker_id = (await http.get("/workers")).json()["items"][0]["id"]
        assert (await http.post(f"/workers/{worker_id}/drain")).status_code == 200
        await asyncio.wait_for(until(stream, "worker", id=worker_id, state="draining"), 30)

        flow = {"name": "wf", "tasks": [{"name": "a", "runtime": "host", "command": ["true"]}]}
        run = (await http.post("/workflows", json=flow)).json()
        await asyncio.wait_for(until(stream, "workflow", id=run["id"]), 30)

        cron = {"name": "tick", "runtime": "host", "command": ["true"], "schedule": "0 0 * * *"}
        schedule = (await http.post("/tasks", json=cron)).json()
        await asyncio.wait_for(until(stream, "schedule", id=schedule["id"]), 30)
        assert (await http.delete(f"/schedules/{schedule['id']}")).status_code == 204
        await asyncio.wait_for(until(stream, "deleted", kind="schedule", id=schedule["id"]), 30)
        assert len(control.control.manager.journal.changes) == 1


async def test_an_open_stream_does_not_hold_the_server_when_it_stops(
    stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    control, http = stack
    async with http.stream("GET", "/events") as response:
        stream = events(response)
        assert (await anext(stream))[0] == "hello"
        await asyncio.wait_for(control.control.stop(), 20)
        left = [event async for event, _ in stream]  # ends: no hang
        assert "overflow" not in left
