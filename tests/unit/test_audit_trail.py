"""The audit trail: records buffered without I/O, written in batches through the journal,
kept (bounded) while the store is down, pruned by retention."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from edgeplane.clock import ManualClock
from edgeplane.errors import Unavailable
from edgeplane.manager import audit as audit_module
from edgeplane.manager.audit import AuditTrail
from edgeplane.manager.journal import Journal
from edgeplane.model.audit import AuditQuery, AuditRecord, clip
from edgeplane.store import AuditPrune, Batch, MemoryStore


class FlakyStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.applied: list[Batch] = []

    async def ping(self) -> None:
        if self.down:
            raise Unavailable("store down")

    async def apply(self, batch: Batch) -> None:
        if self.down:
            raise Unavailable("store down")
        await super().apply(batch)
        self.applied.append(batch)


@pytest_asyncio.fixture
async def trail(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[FlakyStore, AuditTrail, ManualClock]]:
    monkeypatch.setattr(audit_module, "FLUSH_S", 0.01)
    store = FlakyStore()
    journal = Journal(store)
    clock = ManualClock()
    writer = asyncio.create_task(journal.run())
    yield store, AuditTrail(journal, store, clock, retention_days=1, max_rows=1000), clock
    writer.cancel()


NOW = ManualClock().now()


def record(n: float, at: float | None = None) -> AuditRecord:
    at = NOW + n if at is None else at
    return AuditRecord(at=at, actor="ann", action="POST", path=f"/api/v1/x/{n}")


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 -- the trail has no event for this
            await asyncio.sleep(0.005)


async def test_records_are_written_in_batches_not_one_by_one(
    trail: tuple[FlakyStore, AuditTrail, ManualClock],
) -> None:
    store, audit, _ = trail
    for n in range(100):
        audit.record(record(n))
    assert store.applied == []  # recording costs no I/O
    await until(lambda: audit.stats.written == 100)
    assert [len(b.audit) for b in store.applied] == [100]
    stored = await store.list_audit(AuditQuery(limit=1000))
    assert [r.at for r in stored] == [NOW + n for n in reversed(range(100))]


async def test_a_full_batch_goes_at_once(
    trail: tuple[FlakyStore, AuditTrail, ManualClock], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, audit, _ = trail
    monkeypatch.setattr(audit_module, "FLUSH_S", 3600.0)  # only the size can send it
    for n in range(audit_module.FLUSH_ROWS):
        audit.record(record(n))
    await until(lambda: audit.stats.written == audit_module.FLUSH_ROWS)


async def test_records_wait_out_an_outage_bounded(
    trail: tuple[FlakyStore, AuditTrail, ManualClock], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, audit, _ = trail
    monkeypatch.setattr(audit_module, "BUFFER", 10)
    store.down = True
    audit.record(record(0))  # handed over: the journal holds it and retries
    await until(lambda: store.applied == [] and audit._in_flight is not None)
    for n in range(1, 26):  # 25 more while down: only the newest 10 are kept
        audit.record(record(n))
    assert audit.stats.dropped == 15
    store.down = False
    await until(lambda: audit.stats.written == 11)
    stored = await store.list_audit(AuditQuery(limit=1000))
    assert sorted(r.at - NOW for r in stored) == [0.0, *map(float, range(16, 26))]


async def test_a_stopping_manager_writes_what_it_kept(
    trail: tuple[FlakyStore, AuditTrail, ManualClock], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, audit, _ = trail
    monkeypatch.setattr(audit_module, "FLUSH_S", 3600.0)
    for n in range(3):
        audit.record(record(n))
    await audit.flush()
    assert len(await store.list_audit(AuditQuery())) == 3
    assert len(await audit.read(AuditQuery())) == 3


async def test_retention_prunes_with_a_batch_at_most_every_period(
    trail: tuple[FlakyStore, AuditTrail, ManualClock],
) -> None:
    store, audit, clock = trail
    audit.record(record(0, at=1.0))  # of 1970: past any retention
    await until(lambda: audit.stats.written == 1)
    assert store.applied[0].audit_prune == AuditPrune(before=clock.now() - 86400.0, keep=1000)
    audit.record(record(1, at=2.0))
    await until(lambda: audit.stats.written == 2)
    assert store.applied[1].audit_prune is None  # not again so soon
    clock.advance(audit_module.PRUNE_EVERY_S)
    audit.record(record(0, at=clock.now()))
    await until(lambda: audit.stats.written == 3)
    assert store.applied[2].audit_prune is not None
    # records older than the retention are gone: the two of 1970
    stored = await store.list_audit(AuditQuery())
    assert [r.at for r in stored] == [clock.now()]


def test_fields_are_clipped_and_hold_no_nul() -> None:
    assert clip(None) is None
    assert clip("a\x00b") == "a\ufffdb"
    assert clip("x" * 1000) == "x" * 256


async def test_stopping_while_the_store_is_down_does_not_hang(
    trail: tuple[FlakyStore, AuditTrail, ManualClock],
) -> None:
    store, audit, _ = trail
    store.down = True
    audit.record(record(0))
    await until(lambda: audit._journal.down is not None)
    audit.record(record(1))
    async with asyncio.timeout(5):
        await audit.flush()
    store.down = False  # the batch the journal held, then the kept one, once it is back
    await until(lambda: audit.stats.written == 2)
