"""How much work the manager may give a worker: its slots times its prefetch."""

from __future__ import annotations

from dataclasses import replace

from edgeplane.manager.registry import Registry, Reservation, WorkerEntry
from edgeplane.model import Aggregate, Worker
from edgeplane.model.worker import Capabilities
from edgeplane.scheduling.snapshot import Booked


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


# --- spread groups and the root's in-flight tasks -----------------------------------


def test_spread_counts_follow_every_change_of_the_reservations() -> None:
    web = Reservation(seq=1, session="s", spread="p/web")
    member = entry(slots=8, a=web, b=running())
    registry = Registry()
    registry.add(member)
    assert registry.spread() == {"w": {"p/web": 1}}
    member.tasks["c"] = web
    member.tasks["d"] = Reservation(seq=2, session="s", spread="p/db")
    assert registry.spread() == {"w": {"p/web": 2, "p/db": 1}}
    member.tasks["c"] = replace(web, seq=3)  # a resend keeps the count
    del member.tasks["a"]
    member.tasks.pop("d")
    member.tasks.pop("missing")
    assert registry.spread() == {"w": {"p/web": 1}}
    member.tasks.pop("c")
    assert registry.spread() == {}


def cluster_entry(epoch: str, seq: int, **tasks: Reservation) -> WorkerEntry:
    member = entry(slots=1, **tasks)
    member.aggregate = Aggregate(workers=1, free_slots=4, epoch=epoch, seq=seq)
    return member


def test_the_root_books_what_it_sent_after_the_aggregate() -> None:
    def sent(seq: int | None) -> Reservation:
        return Reservation(seq=seq, session="s", runtime="host", labels={"b": "2", "a": "1"})

    member = cluster_entry(
        "E", 5, old=sent(4), counted=sent(5), later=sent(6), unsent=sent(None), recovered=sent(0)
    )
    view = member.cluster_view(0, "E")
    assert view is not None
    assert view.inflight == (Booked("host", (("a", "1"), ("b", "2"))),) * 2
    # an aggregate from before this root process counted none of its commands
    view = member.cluster_view(0, "other")
    assert view is not None and len(view.inflight) == 4
    # built again only when what it shows changes
    assert member.cluster_view(0, "E") is member.cluster_view(0, "E")
    first = member.cluster_view(0, "E")
    member.aggregate = Aggregate(workers=1, free_slots=4, epoch="E", seq=6)
    newer = member.cluster_view(0, "E")
    assert newer is not first and newer is not None and len(newer.inflight) == 1
