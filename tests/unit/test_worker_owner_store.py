"""A worker's owner as the manager keeps it (manager/membership.py): stored before the
answer, never undone by an older version of the worker document waiting in the batch of
registrations, and taken from the join token at the first registration only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from edgeplane.config import Settings
from edgeplane.manager import Manager
from edgeplane.manager.registry import WorkerEntry
from edgeplane.model import Worker
from edgeplane.store import MemoryStore


@pytest.fixture
async def manager() -> AsyncIterator[Manager]:
    store = MemoryStore()
    await store.open()
    found = Manager(Settings(), store, "mqtt://127.0.0.1:9")  # never connects here
    journal = asyncio.create_task(found.journal.run())
    try:
        yield found
    finally:
        journal.cancel()


async def test_a_new_owner_is_not_undone_by_a_waiting_older_document(manager: Manager) -> None:
    entry = WorkerEntry(worker=Worker(id="w1"))
    manager.registry.add(entry)
    manager.members.persist(entry.worker)  # an older version waits in the batch
    assert (await manager.set_owner("w1", "ann")).owner == "ann"
    await manager.members.flush()  # the batch goes out after the change
    await manager.journal.commit()
    stored = await manager.store.get_worker("w1")
    assert stored is not None and stored.owner == "ann"
    assert manager.owner_of("w1") == "ann" and manager.owner_of("nope") is None


async def test_disown_takes_every_node_of_a_user_and_stores_it(manager: Manager) -> None:
    for worker_id, owner in (("a", "ann"), ("b", "ann"), ("c", "bob")):
        manager.registry.add(WorkerEntry(worker=Worker(id=worker_id, owner=owner)))
    assert sorted(await manager.disown("ann")) == ["a", "b"]
    await manager.journal.commit()
    owners = {w.id: w.owner for w in (await manager.store.list_workers())[0]}
    assert owners == {"a": None, "b": None}  # (c was not changed: not written)
    assert manager.owner_of("c") == "bob"
