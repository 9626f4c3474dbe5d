"""Committed documents, fanned out to whoever watches (the dashboard's event stream).

The journal hands every committed round to :meth:`Changes.publish` — the one place state
changes leave the manager for watchers. Nobody watching costs a truth test per round.
Each watcher has a bounded queue: one that falls behind is dropped (its stream ends and
the page reconnects and reloads), so a slow client never holds the manager back.

Every watcher gets the same :class:`Round` object for a round, and what a stream makes of
it (its SSE frames) is made once per audience (:meth:`Round.once`), not once per stream:
encoding each stream's own copy was most of what 10 open dashboards cost the server under
load (``bench.dashboard``, docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

#: (kind, id, document): kind is task, workflow, schedule, application or worker; the
#: document is None when it was deleted. Documents are the versions the journal wrote,
#: which nobody changes afterwards (the manager replaces them, never edits them).
Change = tuple[str, str, Any]

#: Committed rounds a watcher may have waiting before it counts as too slow.
QUEUE_ROUNDS = 256


@dataclass(eq=False)
class Round:
    """One committed round, shared by every watcher (nobody changes it)."""

    changes: list[Change]
    #: what watchers made of it, by the key they gave :meth:`once`
    made: dict[Hashable, Any] = field(default_factory=dict)

    def once(self, key: Hashable, make: Callable[[], T]) -> T:
        """``make()``, called by the first watcher asking with ``key``; the others get
        its result."""
        if key not in self.made:
            self.made[key] = make()
        found: T = self.made[key]
        return found


@dataclass(eq=False)
class Watcher:
    queue: asyncio.Queue[Round | None] = field(default_factory=lambda: asyncio.Queue(QUEUE_ROUNDS))
    #: set when the watcher fell behind and was dropped
    dropped: bool = False

    async def next(self) -> Round | None:
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
        if not changes or not self._watchers:
            return
        shared = Round(changes)
        for watcher in list(self._watchers):
            try:
                watcher.queue.put_nowait(shared)
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
