"""How much work the manager may give a worker: its slots times its prefetch."""

from __future__ import annotations

from edgeplane.manager.registry import Reservation, WorkerEntry
from edgeplane.model import Worker
from edgeplane.model.worker import Capabilities


def entry(slots: int, prefetch: int | None = None, **tasks: Reservation) -> WorkerEntry:
    caps = {"slots": slots, "cpus": 4, "memory_mb": 1024}
    if prefetch is not None:
        caps["prefetch"] = prefetch
    worker = Worker(id="w", capabilities=Capabilities.model_validate(caps))
    return WorkerEntry(worker=worker, tasks=dict(tasks))


def running(daemon: bool = False) -> Reservation:
    return Reservation(seq=1, session="s", daemon=daemon)


def test_a_worker_that_does_not_say_gets_no_more_than_its_slots() -> None:
    assert entry(slots=4).view(0).free_slots == 4
    assert entry(slots=4, a=running()).view(0).free_slots == 3


def test_prefetch_multiplies_the_slots() -> None:
    assert entry(slots=4, prefetch=3).view(0).free_slots == 12
    assert entry(slots=4, prefetch=3, a=running(), b=running()).view(0).free_slots == 10


def test_nothing_queues_behind_a_daemon() -> None:
    # 2 slots: one held by a daemon for good; only the other may have tasks queued on it
    assert entry(slots=2, prefetch=4, d=running(daemon=True)).view(0).free_slots == 4
    full = entry(slots=2, prefetch=4, d=running(daemon=True), e=running(daemon=True))
    assert full.view(0).free_slots == 0


def test_resources_still_bound_what_is_queued() -> None:
    heavy = Reservation(seq=1, session="s", cpu=4.0, memory_mb=1024)
    view = entry(slots=2, prefetch=4, a=heavy).view(0)
    assert (view.free_slots, view.free_cpu, view.free_memory_mb) == (7, 0.0, 0)


def test_a_view_is_rebuilt_only_when_what_it_shows_changes() -> None:
    member = entry(slots=4)
    first = member.view(0)
    # a heartbeat replaces the document, not its capabilities: the same view serves
    member.worker = member.worker.model_copy(update={"last_seen": 5.0})
    assert member.view(0) is first
    member.tasks["a"] = running()
    assert member.view(0).free_slots == 3
    member.tasks.pop("a")
    assert member.view(0).free_slots == 4
    assert member.view(1).order == 1
    bigger = member.worker.capabilities.model_copy(update={"slots": 6})
    member.worker = member.worker.model_copy(update={"capabilities": bigger})
    assert member.view(1).free_slots == 6
