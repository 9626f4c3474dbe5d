"""The audit trail: records of mutating API calls and broker identity changes, kept in
memory a moment and written in batches through the journal's one writer.

Writing a record per request would cost the hot path (``POST /tasks``) a store round trip
each; instead :meth:`AuditTrail.record` appends to a buffer (no I/O), and the buffer goes
to the journal as one unit every :data:`FLUSH_S` or every :data:`FLUSH_ROWS` records,
whichever comes first. The journal writes it in its next transaction, so SQLite keeps one
writer and a busy manager's audit rows ride in transactions it makes anyway.

One batch is handed over at a time. While the store is down the journal holds that batch
and retries it; new records wait here, at most :data:`BUFFER` of them: past that the
oldest are dropped and counted (``dropped``, ``edgeplane_audit_dropped`` in /metrics).
A manager killed with ``kill -9`` loses what it had not handed over yet (at most
:data:`FLUSH_S` of records); a stopped one writes everything first (:meth:`flush`), unless
the store is down then.

Retention: with a batch, at most every :data:`PRUNE_EVERY_S`, goes an
:class:`~edgeplane.store.AuditPrune` that drops records older than
``audit_retention_days`` and all but the newest ``audit_max_rows``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass

from edgeplane.clock import Clock
from edgeplane.manager.journal import Journal
from edgeplane.model.audit import AuditQuery, AuditRecord
from edgeplane.store import AuditPrune, Store

log = logging.getLogger(__name__)

#: Seconds a record waits in memory before it is handed to the journal.
FLUSH_S = 0.5
#: Records that make a batch at once.
FLUSH_ROWS = 512
#: Records kept in memory while a batch is being written (the store is down): past it
#: the oldest are dropped, so an outage cannot grow the manager's memory without bound.
BUFFER = 10_000
#: Seconds a read waits for the records kept in memory to be written first.
READ_FLUSH_S = 2.0
#: Seconds between two prunes of the stored log.
PRUNE_EVERY_S = 600.0


@dataclass
class AuditStats:
    #: records dropped because the buffer was full while the store could not be written
    dropped: int = 0
    #: records handed to the journal and committed
    written: int = 0


class AuditTrail:
    def __init__(
        self,
        journal: Journal,
        store: Store,
        clock: Clock,
        *,
        retention_days: float,
        max_rows: int,
    ) -> None:
        self._journal = journal
        self._store = store
        self._clock = clock
        self.retention_s = retention_days * 86400.0
        self.max_rows = max_rows
        self._buffer: deque[AuditRecord] = deque()
        self._timer: asyncio.Handle | None = None
        self._in_flight: asyncio.Future[None] | None = None
        self._pruned_at: float | None = None
        self.stats = AuditStats()

    def now(self) -> float:
        return self._clock.now()

    def record(self, record: AuditRecord) -> None:
        """Keep ``record`` to be written soon (no I/O: safe on the hot path)."""
        if len(self._buffer) >= BUFFER:
            self._buffer.popleft()
            if self.stats.dropped == 0:
                log.error("audit buffer full while the store is down; dropping the oldest")
            self.stats.dropped += 1
        self._buffer.append(record)
        if len(self._buffer) >= FLUSH_ROWS:
            self._flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # before the loop runs (nothing to flush to yet)
                return
            self._timer = loop.call_later(FLUSH_S, self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer:
            return
        if self._in_flight is not None and not self._in_flight.done():
            # one batch at a time: the next goes when this one committed
            return
        records = list(self._buffer)
        self._buffer.clear()
        self._in_flight = self._journal.audit(records, self._prune())
        self._in_flight.add_done_callback(lambda done: self._written(done, len(records)))

    def _written(self, done: asyncio.Future[None], count: int) -> None:
        if done.cancelled() or done.exception() is not None:
            # refused by the store (never for want of it: outages are retried)
            log.error("the store refused audit records", extra={"records": count})
        else:
            self.stats.written += count
        if self._buffer and self._timer is None:
            self._timer = asyncio.get_running_loop().call_soon(self._flush)

    def _prune(self) -> AuditPrune | None:
        at = self._clock.monotonic()
        if self._pruned_at is not None and at - self._pruned_at < PRUNE_EVERY_S:
            return None
        self._pruned_at = at
        return AuditPrune(before=self._clock.now() - self.retention_s, keep=self.max_rows)

    async def flush(self) -> None:
        """Hand everything kept to the journal and wait until it is written (a stopping
        manager's last records). While the store is down it does not wait: what the
        journal holds is then the journal's to write or lose, as every other change."""
        while self._journal.down is None:
            if self._in_flight is not None and not self._in_flight.done():
                # in steps: the store may go down meanwhile
                await asyncio.wait([self._in_flight], timeout=0.1)
                continue
            if not self._buffer:
                return
            self._flush()

    async def read(self, query: AuditQuery) -> list[AuditRecord]:
        """Stored records (newest first), after writing those kept in memory, so a read
        sees every call answered before it; while the store is down, it is not waited
        for (the read itself then answers 503)."""
        if self._journal.down is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.flush()), READ_FLUSH_S)
        return await self._store.list_audit(query)
