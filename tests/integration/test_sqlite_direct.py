"""The SQLite hot path never waits for a lock on the event loop: a locked database sends the
transaction to the store's thread, and the loop goes on serving meanwhile."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from edgeplane.model import Task
from edgeplane.store import SqlStore
from edgeplane.store.sqlite_direct import CHECKPOINT_EVERY

pytestmark = pytest.mark.timeout(60)


async def until(condition: object, what: str) -> None:
    for _ in range(400):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_locked_database_waits_off_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = SqlStore(f"sqlite:///{path}")
    await store.open()
    try:
        await store.add_tasks([Task(id="a")])  # inline, nothing in the way
        # another process's writer holds the database
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        ticks = 0

        async def ticking() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(ticking())
        write = asyncio.create_task(store.save_tasks([Task(id="a", name="renamed")]))
        direct = store._direct
        assert direct is not None
        await until(lambda: direct._in_flight == 1, "the write to wait on the thread")
        seen = ticks
        await until(lambda: ticks > seen + 100, "the loop to keep running")
        assert not write.done()
        blocker.execute("COMMIT")
        await write
        renamed = await store.get_task("a")
        assert renamed is not None and renamed.name == "renamed"
        ticker.cancel()
        blocker.close()
    finally:
        await store.close()


async def test_inline_writes_are_checkpointed_on_the_thread(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = SqlStore(f"sqlite:///{path}")
    await store.open()
    try:
        for n in range(CHECKPOINT_EVERY * 2):
            await store.add_tasks([Task(id=f"t{n}")])
        direct = store._direct
        assert direct is not None
        await until(lambda: direct.checkpoints >= 1, "a checkpoint")
        with sqlite3.connect(path) as check:
            assert check.execute("SELECT count(*) FROM tasks").fetchone() == (400,)
    finally:
        await store.close()
