"""Group commit: coalescing, callbacks after the commit, versions readers can still see."""

from __future__ import annotations

from edgeplane.manager.journal import Journal
from edgeplane.model import Task
from edgeplane.store import MemoryStore


async def test_writes_coalesce_and_callbacks_follow_the_commit() -> None:
    store = MemoryStore()
    await store.open()
    journal = Journal(store)
    seen: list[str | None] = []

    async def after() -> None:
        stored = await store.get_task("t")
        seen.append(stored.state if stored else None)

    journal.write([Task(id="t", state="scheduled")])
    done = journal.write([Task(id="t", state="running")], then=after)
    assert journal.newest("t") is not None and journal.newest("t").state == "running"  # type: ignore[union-attr]
    await journal.commit()
    assert done.done() and seen == ["running"]
    assert (await store.get_task("t")).state == "running"  # type: ignore[union-attr]


async def test_recent_versions_outlive_the_commit_until_forgotten() -> None:
    store = MemoryStore()
    await store.open()
    journal = Journal(store)
    journal.write([Task(id="t", state="completed", updated_at=2.0)])
    await journal.commit()
    # A reader whose query started before the commit can still find the newer version.
    assert journal.newest("t") is not None and journal.newest("t").state == "completed"  # type: ignore[union-attr]
    journal.forget("t")
    assert journal.newest("t") is None
