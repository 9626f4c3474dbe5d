"""Task events from a member to its parent (a worker to its manager, a cluster to its
root): sent in batches, final ones kept until acked and sent again until they are.

A final event survives a lost message or a parent restart this way; the parent applies
each (task, attempt) once, so a repeat is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable

from edgeplane import clock as clocks
from edgeplane.protocol.messages import FINAL_STATES, EventKey, TaskEvent, TaskEvents

Key = tuple[str, int]


class EventOutbox:
    def __init__(
        self,
        send: Callable[[TaskEvents], Awaitable[None]],
        clock: clocks.Clock,
        window_s: float,
        *,
        busy: Callable[[], bool] = lambda: True,
    ) -> None:
        """``busy`` says whether more events are likely soon: only then does a flush wait
        ``window_s`` for them (fewer messages, fewer commits at the parent)."""
        self._send = send
        self._clock = clock
        self._window_s = window_s
        self._busy = busy
        self._queued: list[TaskEvent] = []
        self._unacked: dict[Key, tuple[TaskEvent, float]] = {}
        self._wake = asyncio.Event()
        self._quiet = asyncio.Event()
        self.closed = False

    def emit(self, event: TaskEvent) -> None:
        """Send ``event`` with the next batch."""
        if self.closed:
            return
        self._queued.append(event)
        self._wake.set()

    def emit_final(self, event: TaskEvent) -> None:
        """Send a final event and keep it until the parent acks it."""
        self._unacked[(event.task_id, event.attempt)] = (event, self._clock.monotonic())
        self.emit(event)

    def ack(self, keys: Iterable[EventKey]) -> None:
        for key in keys:
            self._unacked.pop((key.task_id, key.attempt), None)

    def unacked_tasks(self) -> set[str]:
        return {task_id for task_id, _ in self._unacked}

    def resend(self, older_than: float = 0.0) -> None:
        """Send again the unacked events last sent at least ``older_than`` seconds ago."""
        mono = self._clock.monotonic()
        for key, (event, sent) in list(self._unacked.items()):
            if mono - sent >= older_than:
                self._unacked[key] = (event, mono)
                self.emit(event)

    def settled(self) -> None:
        """Nothing more is coming for now (e.g. the last running task ended): send."""
        self._quiet.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            if self._busy():
                self._quiet.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._quiet.wait(), self._window_s)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Everything queued, in one message. A task that started and ended within one
        window needs only its final event (which carries its start time)."""
        batch, self._queued = self._queued, []
        ended = {(e.task_id, e.attempt) for e in batch if e.state in FINAL_STATES}
        if ended:
            batch = [
                e for e in batch if e.state != "running" or (e.task_id, e.attempt) not in ended
            ]
        if batch:
            await self._send(TaskEvents(events=batch))
