"""The SQLite hot path: plain ``sqlite3`` connections, one on its own thread.

Through SQLAlchemy's async layer every statement of a transaction (BEGIN, the statement,
COMMIT, the pool's reset) is a separate round trip to aiosqlite's thread and back through
the event loop; on this 2-core machine that made a one-row write cost 1.7 to 4.5 ms and was
most of a task's latency. Here a whole transaction is one function run on the thread:
one round trip. Only the task hot path (insert, upsert, read by id) uses it; schema and
everything else stay on SQLAlchemy. Both share the file (WAL) and the store's write lock.

A small transaction (a few rows, a read by id) does not even take the hop: it runs right
on the event loop when the thread is idle. It costs ~30 µs there against ~300 µs for the
round trip to the thread, and a task's latency path has three of them. Big batches still
go to the thread so the loop keeps serving while SQLite works.

What bounds the work on the loop: at most :data:`INLINE_ROWS` rows, on a connection of
its own that never waits (busy timeout 0: a database locked by another connection or
process sends the transaction to the thread, whose connection waits up to the busy
timeout) and never checkpoints (with ``synchronous=NORMAL`` a WAL commit does not sync;
a checkpoint does, so the thread runs one every :data:`CHECKPOINT_EVERY` inline writes).
What remains is appending a few pages to the WAL.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

#: Transactions of at most this many rows run on the event loop (see the module docstring).
INLINE_ROWS = 8
#: ``(sql, rows)`` pairs written in one transaction, each as an ``executemany``
Statements = Sequence[tuple[str, Sequence[tuple[Any, ...]]]]
#: ``(sql, params, check)``: run first in the transaction; ``check`` gets the first row
#: (or None) and raises to write nothing (a fenced write, ``edgeplane.store.leases``)
Guard = tuple[str, tuple[Any, ...], Callable[[Any], None]]
#: Inline writes between two checkpoints on the thread: a few pages each, so the WAL
#: stays near SQLite's own 1,000-page checkpoint threshold.
CHECKPOINT_EVERY = 200


class DirectSqlite:
    def __init__(self, path: str, busy_ms: int) -> None:
        self._path = path
        self._busy_ms = busy_ms
        #: used on the event loop only, and only while the thread is idle (below)
        self._inline: sqlite3.Connection | None = None
        #: used on the thread only
        self._threaded: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="edgeplane-sqlite")
        #: jobs on the thread; the loop works inline only when it is 0, so the order of
        #: reads and writes is the order of the calls
        self._in_flight = 0
        self._inline_writes = 0
        #: checkpoints run on the thread (for tests and diagnosis)
        self.checkpoints = 0

    async def write(
        self, statements: Statements, guard: Guard | None = None, *, inline: bool = True
    ) -> int:
        """Each ``(sql, rows)`` as an ``executemany``, all in one transaction after
        ``guard``; an error (``sqlite3.IntegrityError``, the guard's...) rolls the whole of
        it back. ``inline=False``: on the thread however few its rows (a statement that may
        touch many rows: a prune). The rows it changed."""
        small = inline and sum(len(rows) for _, rows in statements) <= INLINE_ROWS
        if small and self._in_flight == 0:
            changed = self._write_inline(statements, guard)
            if changed is not None:
                return changed
        changes: int = await self._on_thread(self._write, statements, guard)
        return changes

    async def scalar(self, sql: str, params: tuple[Any, ...]) -> Any:
        """The first column of the first row, or None."""
        if self._in_flight == 0:
            try:
                return self._scalar(self._inline_connection(), sql, params)
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise
        return await self._on_thread(self._scalar_threaded, sql, params)

    def _write_inline(self, statements: Statements, guard: Guard | None) -> int | None:
        """The transaction on the loop, and the rows it changed; None when the database
        is locked (nothing done)."""
        try:
            changed = _transaction(self._inline_connection(), statements, guard)
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                return None
            raise
        self._inline_writes += 1
        if self._inline_writes % CHECKPOINT_EVERY == 0:
            self._checkpoint_soon()
        return changed

    def _checkpoint_soon(self) -> None:
        loop = asyncio.get_running_loop()
        self._in_flight += 1
        job = loop.run_in_executor(self._thread, self._checkpoint)

        def done(future: asyncio.Future[None]) -> None:
            self._in_flight -= 1
            if not future.cancelled():
                future.exception()  # a failed checkpoint is retried by the next one

        job.add_done_callback(done)

    async def _on_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        self._in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)
        finally:
            self._in_flight -= 1

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close_threaded)
        self._thread.shutdown(wait=True)
        if self._inline is not None:
            self._inline.close()
            self._inline = None

    def _inline_connection(self) -> sqlite3.Connection:
        if self._inline is None:
            conn = _connect(self._path, busy_ms=0)
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._inline = conn
        return self._inline

    # --- on the thread ------------------------------------------------------------------

    def _threaded_connection(self) -> sqlite3.Connection:
        if self._threaded is None:
            self._threaded = _connect(self._path, busy_ms=self._busy_ms)
        return self._threaded

    def _write(self, statements: Statements, guard: Guard | None) -> int:
        return _transaction(self._threaded_connection(), statements, guard)

    def _scalar_threaded(self, sql: str, params: tuple[Any, ...]) -> Any:
        return self._scalar(self._threaded_connection(), sql, params)

    def _checkpoint(self) -> None:
        # PASSIVE: copies what it can without waiting for readers or writers
        self._threaded_connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        self.checkpoints += 1

    @staticmethod
    def _scalar(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> Any:
        row = conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def _close_threaded(self) -> None:
        if self._threaded is not None:
            self._threaded.close()
            self._threaded = None


def _connect(path: str, *, busy_ms: int) -> sqlite3.Connection:
    # the busy timeout from the start: even setting the journal mode may meet a lock
    conn = sqlite3.connect(
        path, timeout=busy_ms / 1000, isolation_level=None, check_same_thread=False
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _transaction(
    conn: sqlite3.Connection, statements: Statements, guard: Guard | None = None
) -> int:
    """The rows the statements changed."""
    conn.execute("BEGIN IMMEDIATE")
    before = conn.total_changes
    try:
        if guard is not None:
            sql, params, check = guard
            check(conn.execute(sql, params).fetchone())
        for sql, rows in statements:
            conn.executemany(sql, rows)
        changed = conn.total_changes - before
        conn.execute("COMMIT")
        return changed
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED: another connection holds what this one needs."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)
