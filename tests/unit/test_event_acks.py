"""What a parent acks of a member's task events (manager/tasks.py ``on_events``): only the
final events a member keeps until they are acked (protocol/outbox.py). An ack names a
(task, attempt), not an event: had the root acked a cluster's ``scheduled`` event, that ack
dropped the attempt's final event the cluster emitted meanwhile, before the root had it
stored; a root killed then lost the result (the cluster's hello no longer listed the task:
``worker_lost``, "cluster east restarted", found by tests/faults/test_leader.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from edgeplane.clock import ManualClock
from edgeplane.config import Settings
from edgeplane.manager import Manager, lifecycle
from edgeplane.model import Task, Worker
from edgeplane.protocol import (
    AckEvents,
    EventKey,
    EventOutbox,
    TaskEvent,
    TaskEvents,
    decode,
    parse_body,
)
from edgeplane.store import MemoryStore


@pytest.fixture
async def root() -> AsyncIterator[Manager]:
    store = MemoryStore()
    await store.open()
    found = Manager(Settings(), store, "mqtt://127.0.0.1:9", root=True)  # never connects
    task = lifecycle.place(lifecycle.start(Task(id="t1", name="x"), now=1.0), "east", now=2.0)
    await store.save_tasks([task])
    found.members.recover([Worker(id="east")], [task])  # as a root taking over does
    journal = asyncio.create_task(found.journal.run())
    try:
        yield found
    finally:
        journal.cancel()


async def test_an_ack_never_drops_a_final_event_the_root_has_not_stored(
    root: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    acks: list[AckEvents] = []

    async def publish(topic: str, payload: bytes, qos: int | None = None) -> None:
        envelope = decode(payload)
        body = parse_body(envelope.type, envelope.body)
        if isinstance(body, AckEvents):
            acks.append(body)

    monkeypatch.setattr(root.link, "publish", publish)
    sent: list[TaskEvents] = []

    async def send(events: TaskEvents) -> None:
        sent.append(events)

    cluster = EventOutbox(send, ManualClock(), 0.0)  # the cluster's side of the link
    cluster.emit(TaskEvent(task_id="t1", attempt=1, state="scheduled", worker_id="w1"))
    await cluster.flush()
    # The task ends on the cluster while the root stores the placement; the final event
    # is on its way to a root that dies before storing it.
    cluster.emit_final(TaskEvent(task_id="t1", attempt=1, state="completed", results=[7]))
    await root.tasks.on_events("east", sent.pop(0).events)
    await root.journal.commit()
    for ack in acks:
        cluster.ack(ack.keys)
    assert "t1" in cluster.unacked_tasks()  # kept: resent, and listed in its next hello
    stored = await root.store.get_task("t1")
    assert stored is not None and stored.state == "scheduled"
    # Once the root has stored the end, the ack lets the cluster forget it.
    await cluster.flush()
    await root.tasks.on_events("east", sent.pop(0).events)
    await root.journal.commit()
    for ack in acks:
        cluster.ack(ack.keys)
    assert cluster.unacked_tasks() == set()
    stored = await root.store.get_task("t1")
    assert stored is not None and (stored.state, stored.results) == ("completed", [7])


async def test_only_a_final_event_stands_for_the_running_event_of_its_batch() -> None:
    sent: list[TaskEvents] = []

    async def send(events: TaskEvents) -> None:
        sent.append(events)

    outbox = EventOutbox(send, ManualClock(), 0.0)
    outbox.emit(TaskEvent(task_id="a", attempt=1, state="scheduled", worker_id="w1"))
    outbox.emit(TaskEvent(task_id="a", attempt=1, state="running", worker_id="w1"))
    outbox.emit(TaskEvent(task_id="b", attempt=1, state="running"))
    outbox.emit_final(TaskEvent(task_id="b", attempt=1, state="completed", started_at=1.0))
    await outbox.flush()
    [batch] = sent
    # "a" runs (a scheduled event is no end); "b" ended: its final event carries the start
    assert [(e.task_id, e.state) for e in batch.events] == [
        ("a", "scheduled"),
        ("a", "running"),
        ("b", "completed"),
    ]


async def test_an_ack_is_sent_as_its_model_would_be(
    root: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    # on_events sends the ack's keys as plain dicts (cheaper than a model per event): the
    # bytes must be those of AckEvents with an EventKey per final event
    bodies: list[bytes] = []

    async def publish(topic: str, payload: bytes, qos: int | None = None) -> None:
        bodies.append(payload.partition(b',"body":')[2][:-1])

    monkeypatch.setattr(root.link, "publish", publish)
    await root.tasks.on_events(
        "east", [TaskEvent(task_id="t1", attempt=1, state="completed", results=[7])]
    )
    await root.journal.commit()
    model = AckEvents(keys=[EventKey(task_id="t1", attempt=1)])
    assert bodies == [model.__pydantic_serializer__.to_json(model, exclude_defaults=True)]
