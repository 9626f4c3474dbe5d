"""Committed documents, fanned out to whoever watches (the dashboard's event stream).

The journal hands every committed round to :meth:`Changes.publish` — the one place state
changes leave the manager for watchers. Nobody watching costs a truth test per round.
Each watcher has a bounded queue: one that falls behind is dropped (its stream ends and
the page reconnects and reloads), so a slow client never holds the manager back.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

#: (kind, id, document): kind is task, workflow, schedule, application or worker; the
#: document is None when it was deleted. Documents are the versions the journal wrote,
#: which nobody changes afterwards (the manager replaces them, never edits them).
Change = tuple[str, str, Any]

#: Committed rounds a watcher may have waiting before it counts as too slow.
QUEUE_ROUNDS = 256


@dataclass(eq=False)
class Watcher:
    queue: asyncio.Queue[list[Change] | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_ROUNDS)
    )
    #: set when the watcher fell behind and was dropped
    dropped: bool = False

    async def next(self) -> list[Change] | None:
        """The next committed round; None once dropped or closed."""
        return await self.queue.get()


class Changes:
    def __init__(self) -> None:
        self._watchers: set[Watcher] = set()
        #: watchers dropped for falling behind
        self.dropped = 0

    def __bool__(self) -> bool:
        return bool(self._watchers)

    def __len__(self) -> int:
        return len(self._watchers)

    def watch(self) -> Watcher:
        watcher = Watcher()
        self._watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def publish(self, changes: list[Change]) -> None:
        if not changes:
            return
        for watcher in list(self._watchers):
            try:
                watcher.queue.put_nowait(changes)
            except asyncio.QueueFull:
                self._drop(watcher)

    def close(self) -> None:
        """End every open watch: the API is stopping, and its server waits for open
        responses, so a stream left open would hold it forever."""
        for watcher in list(self._watchers):
            self._end(watcher)

    def _drop(self, watcher: Watcher) -> None:
        self.dropped += 1
        watcher.dropped = True
        self._end(watcher)

    def _end(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)
        while not watcher.queue.empty():  # what it missed is stale anyway: it reloads
            watcher.queue.get_nowait()
        watcher.queue.put_nowait(None)
