"""Group commit of task documents.

Many small transitions (dispatches, events, losses) arrive one message at a time; writing
each in its own transaction makes the store the bottleneck. The journal coalesces every
write queued while the previous transaction ran into one ``save_tasks`` call, keeping the
latest version of each task, and runs the callbacks registered with those writes only
once they are durable (acks to workers, dispatches, waking waiters).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable

from edgeplane.model import Task
from edgeplane.store import Store

log = logging.getLogger(__name__)

After = Callable[[], Awaitable[None] | None]

#: Seconds between attempts when the store refuses a write.
RETRY_S = 0.5
#: Recently committed versions kept for readers (see :meth:`Journal.newest`).
RECENT = 4096


class Journal:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._queued: dict[str, Task] = {}
        self._writing: dict[str, Task] = {}
        self._recent: OrderedDict[str, Task] = OrderedDict()
        self._after: list[After] = []
        self._done: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        #: called with every committed batch (the cluster's uplink reports from here)
        self.listeners: list[Callable[[list[Task]], None]] = []

    def write(self, tasks: Iterable[Task], then: After | None = None) -> asyncio.Future[None]:
        """Queue tasks for the next transaction; the future resolves once it committed."""
        for task in tasks:
            self._queued[task.id] = task
        if then is not None:
            self._after.append(then)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._done.append(done)
        self._wake.set()
        return done

    def newest(self, task_id: str) -> Task | None:
        """The newest version of a task the journal has seen, committed or not.

        A reader's store query may have started before a commit it then overtakes; the
        recently committed versions let it replace what it read with what it missed.
        """
        return self._queued.get(task_id) or self._writing.get(task_id) or self._recent.get(task_id)

    def forget(self, task_id: str) -> None:
        """The task was deleted: readers must not see a recent version of it."""
        self._recent.pop(task_id, None)

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.commit()

    async def commit(self) -> None:
        """Write everything queued so far (retrying while the store fails), then run callbacks."""
        if not (self._queued or self._after or self._done):
            return
        self._writing, self._queued = self._queued, {}
        after, self._after = self._after, []
        done, self._done = self._done, []
        while self._writing:
            try:
                await self._store.save_tasks(list(self._writing.values()))
                break
            except Exception:
                log.exception("store write failed; retrying", extra={"tasks": len(self._writing)})
                await asyncio.sleep(RETRY_S)
        for task_id, task in self._writing.items():
            self._recent[task_id] = task
            self._recent.move_to_end(task_id)
        while len(self._recent) > RECENT:
            self._recent.popitem(last=False)
        committed, self._writing = list(self._writing.values()), {}
        for listener in self.listeners:
            try:
                listener(committed)
            except Exception:
                log.exception("journal listener failed")
        for callback in after:
            try:
                result = callback()
                if result is not None:
                    await result
            except Exception:
                log.exception("journal callback failed")
        for future in done:
            if not future.done():
                future.set_result(None)
