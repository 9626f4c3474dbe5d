"""A node's chute events, kept on the node until its manager has them.

Every chute event (a service started, exited or OOM-killed, a chute unhealthy or healthy
again, restarted by the node, a change done or failed, a chute deleted, and a snapshot of
every chute) gets the next ``seq`` and is written to ``<dir>/<seq>.json`` (fsync'd)
before it is sent. The worker sends what the node holds, oldest first
(:meth:`EventLog.batch`), again and again until the manager acks it (``chute.ack``):
stored there, the node forgets it (:meth:`EventLog.ack`).

So a node cut off from its broker (its chutes keep running) keeps its events, also across
a worker restart, and delivers them in order when it is back; the manager applies each
``seq`` of the node's ``stream`` once (``manager/chute_states.py``). Bounded: past
``max_pending`` events the oldest go (counted in ``dropped``), and :attr:`EventLog.resync`
asks the node for a snapshot, so the manager's view is whole again even so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from edgeplane.chutes.changes import write_atomic
from edgeplane.clock import Clock, SystemClock
from edgeplane.protocol import ChuteEvent, ChuteEvents
from edgeplane.protocol.messages import MAX_CHUTE_EVENTS, ChuteEventKind

log = logging.getLogger(__name__)

#: events a node holds for its manager at most (the oldest go past it)
MAX_PENDING = 1000
_STREAM = "stream"
#: "<floor> <dropped>": the node holds no event up to ``floor`` any more
_FLOOR = "floor"


class EventLog:
    """The node's undelivered chute events in ``directory``; :meth:`open` before use."""

    def __init__(
        self, directory: Path, *, clock: Clock | None = None, max_pending: int = MAX_PENDING
    ) -> None:
        self.directory = directory
        self.clock = clock or SystemClock()
        self.max_pending = max_pending
        self.stream = ""
        #: the highest seq the node holds no more (acked, or dropped past the bound)
        self.floor = 0
        #: events dropped past the bound, since this data dir was made
        self.dropped = 0
        self._pending: dict[int, ChuteEvent] = {}
        self._next = 1
        self._lock = asyncio.Lock()
        #: set when an event is added: the worker sends
        self.changed = asyncio.Event()
        #: events were dropped: the node owes its manager a snapshot
        self.resync = False

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        stream_file = self.directory / _STREAM
        try:
            self.stream = stream_file.read_text().strip()
        except FileNotFoundError:
            self.stream = ""
        if not self.stream:
            self.stream = secrets.token_hex(8)
            write_atomic(stream_file, self.stream.encode())
        with contextlib.suppress(FileNotFoundError, ValueError):
            floor, dropped = (self.directory / _FLOOR).read_text().split()
            self.floor, self.dropped = int(floor), int(dropped)
        for path in self.directory.glob("*.json"):
            try:
                event = ChuteEvent.model_validate_json(path.read_bytes())
            except (OSError, ValueError):
                log.error("unreadable chute event dropped", extra={"path": str(path)})
                path.unlink(missing_ok=True)
                continue
            if event.seq <= self.floor:
                path.unlink(missing_ok=True)  # acked before a crash could remove it
            else:
                self._pending[event.seq] = event
        self._pending = dict(sorted(self._pending.items()))
        self._next = max([self.floor, *self._pending]) + 1
        if self._pending:
            self.changed.set()

    def __len__(self) -> int:
        return len(self._pending)

    async def emit(self, kind: ChuteEventKind, chute: str = "", **fields: Any) -> ChuteEvent:
        """Record an event (on disk when this returns) for the manager. A caller that is
        cancelled meanwhile does not cut it short: its seq is taken and its file written
        whole, or neither (two writes of one seq would race on its file)."""
        return await asyncio.shield(asyncio.ensure_future(self._emit(kind, chute, **fields)))

    async def _emit(self, kind: ChuteEventKind, chute: str, **fields: Any) -> ChuteEvent:
        async with self._lock:  # one seq at a time, each on disk before the next
            event = ChuteEvent(
                seq=self._next, ts=self.clock.now(), kind=kind, chute=chute, **fields
            )
            await asyncio.to_thread(self._write, event)
            self._next += 1
            self._pending[event.seq] = event
            if len(self._pending) > self.max_pending:
                await self._drop(len(self._pending) - self.max_pending)
        self.changed.set()
        return event

    def batch(self, worker_id: str, limit: int = MAX_CHUTE_EVENTS) -> ChuteEvents | None:
        """The oldest events held (None: none)."""
        if not self._pending:
            return None
        events = list(self._pending.values())[:limit]
        return ChuteEvents(
            worker_id=worker_id,
            stream=self.stream,
            after=self.floor,
            dropped=self.dropped,
            events=events,
        )

    async def ack(self, stream: str, seq: int) -> int:
        """The manager stored the events up to ``seq``: forget them; how many went."""
        if stream != self.stream or seq <= self.floor:
            return 0
        async with self._lock:
            done = [s for s in self._pending if s <= seq]
            await self._forget(done, max(self.floor, min(seq, self._next - 1)))
        return len(done)

    async def _drop(self, count: int) -> None:
        oldest = list(self._pending)[:count]
        self.dropped += len(oldest)
        self.resync = True
        log.warning(
            "chute events dropped: the manager has not taken them",
            extra={"dropped": len(oldest), "held": self.max_pending},
        )
        await self._forget(oldest, oldest[-1])

    async def _forget(self, seqs: list[int], floor: int) -> None:
        self.floor = floor
        for seq in seqs:
            self._pending.pop(seq, None)
        await asyncio.to_thread(self._forget_files, seqs, f"{floor} {self.dropped}")

    # --- files (in a thread) ---------------------------------------------------------

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:012d}.json"

    def _write(self, event: ChuteEvent) -> None:
        write_atomic(self._path(event.seq), event.model_dump_json().encode())

    def _forget_files(self, seqs: list[int], floor: str) -> None:
        # the floor first: a crash between the two leaves files that open() removes
        write_atomic(self.directory / _FLOOR, floor.encode())
        for seq in seqs:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(seq))
