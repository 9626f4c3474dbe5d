"""The one commit path: one writer, committed-only reads, outages waited out, refused
changes isolated (never retried forever), inserts that conflict, deletes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from edgeplane.errors import Conflict, Fenced, Invalid, Unavailable
from edgeplane.manager import journal as journal_module
from edgeplane.manager.journal import Journal
from edgeplane.model import Schedule, Task, Worker
from edgeplane.store import Batch, Claim, MemoryStore


class FlakyStore(MemoryStore):
    """A memory store that can be made unreachable, slow, or refuse some task ids."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.poison: set[str] = set()
        self.gate: asyncio.Event | None = None
        self.applied: list[Batch] = []
        self.entered = asyncio.Event()

    async def ping(self) -> None:
        if self.down:
            raise Unavailable("store down")

    async def apply(self, batch: Batch) -> None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise Unavailable("store down")
        if any(t.id in self.poison for t in (*batch.tasks, *batch.new_tasks)):
            raise ValueError("NOT NULL constraint failed: tasks.priority")
        await super().apply(batch)
        self.applied.append(batch)


@pytest_asyncio.fixture
async def running() -> AsyncIterator[tuple[FlakyStore, Journal]]:
    store = FlakyStore()
    journal = Journal(store)
    writer = asyncio.create_task(journal.run())
    yield store, journal
    writer.cancel()


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 -- the journal has no event for this
            await asyncio.sleep(0.005)


async def test_writes_coalesce_and_callbacks_follow_the_commit(
    running: tuple[FlakyStore, Journal],
) -> None:
    store, journal = running
    seen: list[str | None] = []

    async def after() -> None:
        stored = await store.get_task("t")
        seen.append(stored.state if stored else None)

    journal.write([Task(id="t", state="scheduled")])
    done = journal.write([Task(id="t", state="running")], then=after)
    assert journal.newest("t") is not None and journal.newest("t").state == "running"  # type: ignore[union-attr]
    assert journal.committed("t") is None  # not durable yet: readers must not see it
    await journal.commit()
    assert done.done() and seen == ["running"]
    assert (await store.get_task("t")).state == "running"  # type: ignore[union-attr]
    assert journal.committed("t").state == "running"  # type: ignore[union-attr]


async def test_commit_from_elsewhere_during_a_commit_loses_no_listener_batch(
    running: tuple[FlakyStore, Journal],
) -> None:
    # The reported bug: a second commit() while the first awaited the store overwrote
    # what was being written, and the listeners never heard of task a.
    store, journal = running
    heard: list[list[str]] = []
    journal.listeners.append(lambda tasks: heard.append(sorted(t.id for t in tasks)))
    store.gate = asyncio.Event()
    journal.write([Task(id="a", state="completed")])
    await store.entered.wait()  # the writer is inside the store with a
    journal.write([Task(id="b", state="completed")])
    second = asyncio.create_task(journal.commit())
    await asyncio.sleep(0)
    store.gate.set()
    await second
    assert sorted(t for batch in heard for t in batch) == ["a", "b"]
    assert all(heard)


async def test_reads_never_see_what_a_refusing_store_did_not_keep(
    running: tuple[FlakyStore, Journal],
) -> None:
    store, journal = running
    store.poison.add("t")
    ran: list[bool] = []
    done = journal.write(
        [Task(id="t", state="completed", results=[5])], then=lambda: ran.append(True)
    )
    with pytest.raises(Invalid):
        await done
    assert journal.committed("t") is None and journal.newest("t") is None
    assert ran == [] and journal.stats.refused == 1


async def test_a_refused_change_fails_alone_and_is_not_retried(
    running: tuple[FlakyStore, Journal],
) -> None:
    store, journal = running
    store.poison.add("bad")
    good = [journal.write([Task(id=f"t{i}", priority=i)]) for i in range(9)]
    bad = journal.write([Task(id="bad")])
    also = journal.write([Task(id="t9")], workers=[Worker(id="w1")])
    await journal.commit()
    await asyncio.gather(*good, also)
    with pytest.raises(Invalid):
        await bad
    assert len((await store.list_tasks(limit=100))[0]) == 10
    assert await store.get_worker("w1") is not None
    # Nothing keeps trying the refused change: later writes commit at once.
    rounds = journal.stats.rounds
    await journal.write([Task(id="later")])
    assert journal.stats.rounds == rounds + 1


async def test_an_outage_is_waited_out_and_users_are_told(
    running: tuple[FlakyStore, Journal], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, journal = running
    monkeypatch.setattr(journal_module, "RETRY_MAX_S", 0.02)
    monkeypatch.setattr(journal_module, "USER_WAIT_S", 0.05)
    store.down = True
    done = journal.write([Task(id="t", state="completed")])
    await until(lambda: journal.down is not None)
    with pytest.raises(Unavailable):
        journal.check()
    with pytest.raises(Unavailable):
        schedule = Schedule(id="s", kind="task", cron="* * * * *")
        await journal.settle(journal.write(schedules=[schedule]))
    assert not done.done()
    store.down = False
    await done
    await journal.commit()
    assert journal.down is None
    journal.check()
    assert (await store.get_task("t")) is not None
    assert (await store.get_schedule("s")) is not None  # the queued change was kept


async def test_an_insert_whose_id_is_taken_conflicts_without_touching_the_stored_one(
    running: tuple[FlakyStore, Journal],
) -> None:
    store, journal = running
    await journal.insert([Task(id="x", name="first")])
    again = journal.insert([Task(id="x", name="second")])
    other = journal.insert([Task(id="y")])
    with pytest.raises(Conflict):
        await again
    await other
    assert (await store.get_task("x")).name == "first"  # type: ignore[union-attr]
    assert (await store.get_task("y")) is not None


async def test_delete_removes_and_readers_forget(running: tuple[FlakyStore, Journal]) -> None:
    store, journal = running
    await journal.write([Task(id="t", state="completed")])
    assert journal.committed("t") is not None
    await journal.delete("task", "t")
    assert journal.committed("t") is None and await store.get_task("t") is None


async def test_a_fenced_store_deposes_and_nothing_is_retried() -> None:
    """Another process leads now: the store refuses the term; the writes fail at once with
    Fenced, the listeners hear it, and the journal does not wait it out as an outage."""
    store = MemoryStore()
    lease = await store.claim_lease("d/c", Claim("me", "home-me", "", 1.0), 0.0)
    store.fence("d/c", lease.term)
    await store.claim_lease("d/c", Claim("other", "home-o", "", 1.0), 5.0)  # mine expired
    journal = Journal(store)
    heard: list[Fenced] = []
    journal.on_fenced.append(heard.append)
    writer = asyncio.create_task(journal.run())
    try:
        done = journal.write([Task(id="t1", created_at=1.0)])
        with pytest.raises(Fenced):
            await asyncio.wait_for(done, 5)
        assert len(heard) == 1 and journal.stats.fenced == 1
        assert journal.stats.outages == 0 and journal.down is None
        assert await store.get_task("t1") is None
    finally:
        writer.cancel()
