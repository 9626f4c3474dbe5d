"""The SQLite hot path: one plain ``sqlite3`` connection on its own thread.

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
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

#: Transactions of at most this many rows run on the event loop (see the module docstring).
INLINE_ROWS = 8


class DirectSqlite:
    def __init__(self, path: str, busy_ms: int) -> None:
        self._path = path
        self._busy_ms = busy_ms
        self._conn: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="edgeplane-sqlite")
        #: jobs on the thread; the connection is used inline only when it is 0, so it is
        #: never used by two threads at once
        self._in_flight = 0

    async def write(self, statements: Sequence[tuple[str, Sequence[tuple[Any, ...]]]]) -> None:
        """Each ``(sql, rows)`` as an ``executemany``, all in one transaction; an error
        (``sqlite3.IntegrityError``...) rolls the whole of it back."""
        if sum(len(rows) for _, rows in statements) <= INLINE_ROWS and self._in_flight == 0:
            self._write(statements)
            return
        await self._on_thread(self._write, statements)

    async def scalar(self, sql: str, params: tuple[Any, ...]) -> Any:
        """The first column of the first row, or None."""
        if self._in_flight == 0:
            return self._scalar(sql, params)
        return await self._on_thread(self._scalar, sql, params)

    async def _on_thread(self, function: Any, *args: Any) -> Any:
        self._in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)
        finally:
            self._in_flight -= 1

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=True)

    # --- on the thread ------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
            self._conn = conn
        return self._conn

    def _write(self, statements: Sequence[tuple[str, Sequence[tuple[Any, ...]]]]) -> None:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, rows in statements:
                conn.executemany(sql, rows)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _scalar(self, sql: str, params: tuple[Any, ...]) -> Any:
        row = self._connection().execute(sql, params).fetchone()
        return None if row is None else row[0]

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
