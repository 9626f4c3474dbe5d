"""Live logs for ``GET /tasks/{id}/logs?follow=true``: the followers of each task, fed
with the chunks its worker sends while asked (``worker/tails.py``).

Bounded: a follower's queue holds :data:`QUEUE` chunks; one that falls further behind
loses the newest and is told so (a ``gap``), so a slow reader never holds the manager's
memory. Nothing is kept for tasks nobody follows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from edgeplane.protocol import LogChunk

QUEUE = 256
#: at most this many followers of one task, and in all
MAX_PER_TASK = 16
MAX_FOLLOWERS = 256


class Follower:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[LogChunk] = asyncio.Queue(QUEUE)
        #: chunks dropped because the queue was full
        self.lost = 0


class LogFollowers:
    def __init__(self) -> None:
        self._by_task: dict[str, set[Follower]] = {}

    def count(self) -> int:
        return sum(len(f) for f in self._by_task.values())

    def add(self, task_id: str) -> Follower | None:
        """A new follower of ``task_id``; None when too many follow already."""
        followers = self._by_task.setdefault(task_id, set())
        if len(followers) >= MAX_PER_TASK or self.count() >= MAX_FOLLOWERS:
            return None
        follower = Follower()
        followers.add(follower)
        return follower

    def remove(self, task_id: str, follower: Follower) -> bool:
        """Forget a follower; whether the task has none left."""
        followers = self._by_task.get(task_id, set())
        followers.discard(follower)
        if not followers:
            self._by_task.pop(task_id, None)
            return True
        return False

    def on_chunks(self, chunks: Iterable[LogChunk]) -> None:
        for chunk in chunks:
            for follower in self._by_task.get(chunk.task_id, ()):
                try:
                    follower.queue.put_nowait(chunk)
                except asyncio.QueueFull:
                    follower.lost += 1
