"""A node keeps its chute events on disk until its manager acks them: across a restart,
bounded, numbered on from where it was (``chutes/events.py``)."""

from __future__ import annotations

from pathlib import Path

from edgeplane.chutes.events import EventLog


def files(directory: Path) -> int:
    return len(list(directory.glob("*.json")))


def opened(directory: Path, max_pending: int = 1000) -> EventLog:
    found = EventLog(directory, max_pending=max_pending)
    found.open()
    return found


async def test_events_survive_a_restart_until_acked(tmp_path: Path) -> None:
    log = opened(tmp_path)
    for kind in ("started", "exited", "change_done"):
        await log.emit(kind, "a", status={"name": "a"})
    stream = log.stream
    batch = log.batch("w1")
    assert batch is not None
    assert [e.seq for e in batch.events] == [1, 2, 3] and batch.after == 0
    assert [e.kind for e in batch.events] == ["started", "exited", "change_done"]

    again = opened(tmp_path)  # the worker restarted (or was killed) before any ack
    assert again.stream == stream and len(again) == 3
    assert again.changed.is_set()  # sent as soon as the worker can
    assert await again.ack(stream, 2) == 2
    assert await again.ack("0" * 16, 3) == 0  # another stream's ack: not ours
    await again.emit("started", "b")

    third = opened(tmp_path)
    found = third.batch("w1")
    assert found is not None
    assert [e.seq for e in found.events] == [3, 4] and found.after == 2
    assert await third.ack(stream, 4) == 2
    assert third.batch("w1") is None and files(tmp_path) == 0
    await third.emit("healthy", "b")
    assert opened(tmp_path).batch("w1").events[0].seq == 5  # type: ignore[union-attr]


async def test_past_the_bound_the_oldest_go_and_a_snapshot_is_due(tmp_path: Path) -> None:
    log = opened(tmp_path, max_pending=3)
    for _ in range(5):
        await log.emit("started", "a")
    batch = log.batch("w1")
    assert batch is not None
    assert [e.seq for e in batch.events] == [3, 4, 5]
    assert batch.after == 2 and batch.dropped == 2
    assert log.resync
    assert files(tmp_path) == 3
    kept = opened(tmp_path, max_pending=3)
    assert kept.floor == 2 and kept.dropped == 2


async def test_a_batch_is_bounded(tmp_path: Path) -> None:
    log = opened(tmp_path)
    for _ in range(5):
        await log.emit("started", "a")
    batch = log.batch("w1", limit=2)
    assert batch is not None and [e.seq for e in batch.events] == [1, 2]
