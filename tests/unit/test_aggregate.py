"""Cluster aggregates: grouping, statistics, the root's view and when to send at once."""

from __future__ import annotations

import random
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeplane.model.cluster import Aggregate, CapacityGroup, FreeStats, Location
from edgeplane.scheduling import GroupView, WorkerView
from edgeplane.scheduling.aggregate import aggregate, cluster_view, significant_change


def worker(
    id: str,
    *,
    runtimes: Sequence[str] = ("wasm",),
    labels: Mapping[str, str] | None = None,
    tee: Sequence[str] = (),
    slots: int = 4,
    cpu: float = 4.0,
    memory: int = 4096,
    accelerators: int = 0,
    bridge: bool = False,
) -> WorkerView:
    return WorkerView(
        id=id,
        runtimes=frozenset(runtimes),
        labels=labels or {},
        tee=frozenset(tee),
        free_slots=slots,
        free_cpu=cpu,
        free_memory_mb=memory,
        order=0,
        accelerators=accelerators,
        bridge=bridge,
    )


def group_of(agg: Aggregate, runtime: str, **labels: str) -> CapacityGroup:
    found = [g for g in agg.groups if g.runtime == runtime and g.labels == labels]
    assert len(found) == 1
    return found[0]


# --- aggregate -----------------------------------------------------------------------


def test_no_workers_gives_an_empty_aggregate() -> None:
    agg = aggregate([], ts=5.0)
    assert agg == Aggregate(ts=5.0)


def test_groups_by_runtime_and_label_set_and_counts_a_worker_per_runtime() -> None:
    agg = aggregate(
        [
            worker("a", runtimes=("wasm", "host"), labels={"site": "x"}, slots=2),
            worker("b", labels={"site": "x"}, slots=3),
            worker("c", labels={"site": "y"}, slots=1),
            worker("d", slots=5),
        ]
    )
    assert [(g.runtime, g.labels, g.workers, g.free_slots) for g in agg.groups] == [
        ("host", {"site": "x"}, 1, 2),
        ("wasm", {}, 1, 5),
        ("wasm", {"site": "x"}, 2, 5),
        ("wasm", {"site": "y"}, 1, 1),
    ]
    # Cluster-wide figures count each worker once.
    assert agg.workers == 4
    assert agg.free_slots == 11


def test_label_order_does_not_split_a_group() -> None:
    agg = aggregate(
        [
            worker("a", labels={"site": "x", "zone": "1"}),
            worker("b", labels={"zone": "1", "site": "x"}),
        ]
    )
    assert len(agg.groups) == 1
    assert agg.groups[0].workers == 2
    assert list(agg.groups[0].labels) == ["site", "zone"]


def test_free_stats_are_count_sum_mean_population_std_and_max() -> None:
    agg = aggregate([worker("a", cpu=1.0, memory=100), worker("b", cpu=3.0, memory=300)])
    group = agg.groups[0]
    assert group.cpu == FreeStats(count=2, sum=4.0, mean=2.0, std=1.0, max=3.0)
    assert group.memory_mb == FreeStats(count=2, sum=400.0, mean=200.0, std=100.0, max=300.0)
    assert agg.max_free_cpu == 3.0
    assert agg.max_free_memory_mb == 300
    assert isinstance(agg.max_free_memory_mb, int)


def test_stats_merge_across_runtime_sets_sharing_a_group() -> None:
    """Workers with different runtime sets meet in the group of a shared runtime."""
    agg = aggregate(
        [
            worker("a", runtimes=("wasm",), cpu=1.0),
            worker("b", runtimes=("wasm", "host"), cpu=2.0),
            worker("c", runtimes=("wasm", "container"), cpu=6.0),
        ]
    )
    wasm = group_of(agg, "wasm")
    assert wasm.cpu.count == 3
    assert wasm.cpu.sum == 9.0
    assert wasm.cpu.mean == 3.0
    assert wasm.cpu.std == pytest.approx(statistics.pstdev([1.0, 2.0, 6.0]))
    assert group_of(agg, "host").cpu == FreeStats(count=1, sum=2.0, mean=2.0, std=0.0, max=2.0)


def test_tee_and_accelerators_count_workers() -> None:
    agg = aggregate(
        [
            worker("a", tee=("sgx", "sev"), accelerators=2),
            worker("b", tee=("sgx",)),
            worker("c", accelerators=1, runtimes=("wasm", "host")),
            worker("d"),
        ]
    )
    assert (agg.tee, agg.accelerators) == (2, 2)
    wasm, host = group_of(agg, "wasm"), group_of(agg, "host")
    assert (wasm.tee, wasm.accelerators) == (2, 2)
    assert (host.tee, host.accelerators) == (0, 1)


def test_bridge_counts_workers_that_can_give_tasks_a_bridge_network() -> None:
    agg = aggregate(
        [
            worker("a", runtimes=("container",), bridge=True),
            worker("b", runtimes=("container", "wasm"), bridge=True),
            worker("c", runtimes=("container",)),
            worker("d"),
        ]
    )
    assert agg.bridge == 2
    assert group_of(agg, "container").bridge == 2 and group_of(agg, "wasm").bridge == 1
    view = cluster_view("c1", 0, agg)
    assert {g.runtime: g.bridge for g in view.groups} == {"container": 2, "wasm": 1}
    assert Aggregate.model_validate_json(agg.model_dump_json()) == agg


def test_over_committed_workers_count_as_no_free_capacity() -> None:
    agg = aggregate(
        [worker("a", slots=-1, cpu=-0.5, memory=-64), worker("b", slots=2, cpu=1.0, memory=64)]
    )
    group = agg.groups[0]
    assert group.free_slots == 2
    assert group.cpu.sum == 1.0
    assert group.cpu.mean == 0.5
    assert group.memory_mb.sum == 64.0
    assert agg.free_slots == 2

    alone = aggregate([worker("a", slots=-1, cpu=-0.5, memory=-64)])
    assert (alone.free_slots, alone.max_free_cpu, alone.max_free_memory_mb) == (0, 0.0, 0)
    assert alone.groups[0].cpu == FreeStats(count=1, sum=0.0, mean=0.0, std=0.0, max=0.0)


def test_location_and_timestamp_pass_through() -> None:
    here = Location(lat=52.5, lon=13.4)
    agg = aggregate([worker("a")], location=here, ts=12.5)
    assert agg.location == here
    assert agg.ts == 12.5


def test_aggregate_round_trips_through_json() -> None:
    agg = aggregate([worker("a", labels={"site": "x"}, tee=("sgx",))], ts=1.0)
    assert Aggregate.model_validate_json(agg.model_dump_json()) == agg


# --- cluster_view --------------------------------------------------------------------


def test_cluster_view_maps_each_group() -> None:
    agg = aggregate(
        [worker("a", cpu=1.0, memory=100, tee=("sgx",)), worker("b", cpu=3.0, memory=300)]
    )
    view = cluster_view("c1", 7, agg, labels={"region": "eu"})
    assert view.id == "c1"
    assert view.order == 7
    assert dict(view.labels) == {"region": "eu"}
    assert view.location is None
    assert view.groups == (
        GroupView(
            runtime="wasm",
            labels={},
            workers=2,
            free_slots=8,
            free_cpu_sum=4.0,
            free_cpu_max=3.0,
            free_memory_sum=400.0,
            free_memory_max=300.0,
            tee=1,
        ),
    )


def test_cluster_view_location_prefers_the_argument() -> None:
    agg = aggregate([worker("a")], location=Location(lat=1.0, lon=2.0))
    assert cluster_view("c", 0, agg).location == (1.0, 2.0)
    assert cluster_view("c", 0, agg, location=Location(lat=3.0, lon=4.0)).location == (3.0, 4.0)


# --- significant_change --------------------------------------------------------------


def base(**changes: Any) -> list[WorkerView]:
    """Ten equal workers; ``changes`` replace fields of the first."""
    fields: dict[str, Any] = {"slots": 10, "cpu": 4.0, "memory": 1000} | changes
    return [worker("w0", **fields)] + [
        worker(f"w{i}", slots=10, cpu=4.0, memory=1000) for i in range(1, 10)
    ]


def test_first_aggregate_is_always_significant() -> None:
    assert significant_change(None, aggregate(base()))


def test_equal_aggregates_are_not_significant_even_at_another_time() -> None:
    assert not significant_change(aggregate(base(), ts=1.0), aggregate(base(), ts=9.0))


def test_worker_count_change_is_significant() -> None:
    old = aggregate(base())
    assert significant_change(old, aggregate(base()[:-1]))


def test_a_worker_gaining_or_losing_its_bridge_is_significant() -> None:
    """(It re-registers with new capabilities: the count of workers stays the same.)"""
    old = aggregate([worker("a", runtimes=("container",), bridge=True)])
    assert significant_change(old, aggregate([worker("a", runtimes=("container",))]))


def test_group_appearing_or_disappearing_is_significant() -> None:
    old = aggregate(base())
    new = aggregate(base(runtimes=("wasm", "host")))
    assert significant_change(old, new)
    assert significant_change(new, old)
    relabelled = aggregate(base(labels={"site": "x"}))
    assert significant_change(old, relabelled)


def test_free_slots_change_of_twenty_percent_is_significant() -> None:
    old = aggregate(base())  # 100 free slots
    assert not significant_change(old, aggregate(base(slots=0)))  # 90: -10 %
    less = [worker(f"w{i}", slots=8, cpu=4.0, memory=1000) for i in range(10)]  # 80: -20 %
    assert significant_change(old, aggregate(less))


def test_free_slots_from_or_to_zero_is_significant() -> None:
    empty = aggregate([worker(f"w{i}", slots=0) for i in range(3)])
    one = aggregate([worker("w0", slots=1)] + [worker(f"w{i}", slots=0) for i in range(1, 3)])
    assert significant_change(empty, one)
    assert significant_change(one, empty)


def test_max_free_cpu_or_memory_change_of_twenty_percent_is_significant() -> None:
    old = aggregate(base())
    assert not significant_change(old, aggregate(base(cpu=4.7)))  # +17.5 %
    assert significant_change(old, aggregate(base(cpu=4.8)))  # +20 %
    assert not significant_change(old, aggregate(base(memory=1100)))
    assert significant_change(old, aggregate(base(memory=1200)))


def test_a_group_losing_its_last_slot_is_significant_though_the_cluster_barely_moves() -> None:
    many = [worker(f"w{i}", slots=10) for i in range(10)]
    old = aggregate([*many, worker("h", runtimes=("host",), slots=1)])
    new = aggregate([*many, worker("h", runtimes=("host",), slots=0)])
    assert old.free_slots == 101 and new.free_slots == 100
    assert significant_change(old, new)


def test_a_group_largest_worker_shrinking_is_significant() -> None:
    many = [worker(f"w{i}", cpu=8.0) for i in range(10)]
    old = aggregate([*many, worker("h", runtimes=("host",), cpu=4.0)])
    new = aggregate([*many, worker("h", runtimes=("host",), cpu=2.0)])
    assert old.max_free_cpu == new.max_free_cpu
    assert significant_change(old, new)


def test_threshold_is_adjustable() -> None:
    old = aggregate(base())
    new = aggregate(base(slots=0))  # -10 % free slots
    assert not significant_change(old, new)
    assert significant_change(old, new, threshold=0.1)


# --- properties ----------------------------------------------------------------------

RUNTIMES = ("wasm", "host", "container")

WORKER = st.builds(
    worker,
    id=st.just(""),
    runtimes=st.lists(st.sampled_from(RUNTIMES), min_size=1, max_size=3, unique=True),
    labels=st.dictionaries(st.sampled_from(("site", "zone")), st.sampled_from(("a", "b"))),
    tee=st.lists(st.sampled_from(("sgx", "sev")), max_size=2, unique=True),
    slots=st.integers(0, 20),
    cpu=st.floats(0.0, 64.0, allow_subnormal=False),
    memory=st.integers(0, 1 << 20),
    accelerators=st.integers(0, 2),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(WORKER, max_size=30), st.randoms(use_true_random=False))
def test_property_aggregate_equals_per_worker_figures(
    workers: list[WorkerView], rnd: random.Random
) -> None:
    agg = aggregate(workers)
    assert agg.workers == len(workers)
    assert agg.free_slots == sum(w.free_slots for w in workers)
    assert agg.max_free_cpu == max((w.free_cpu for w in workers), default=0.0)
    assert agg.max_free_memory_mb == max((w.free_memory_mb for w in workers), default=0)
    assert agg.tee == sum(1 for w in workers if w.tee)
    assert agg.accelerators == sum(1 for w in workers if w.accelerators > 0)

    keys = [(g.runtime, tuple(sorted(g.labels.items()))) for g in agg.groups]
    assert keys == sorted(set(keys))
    expected = {(r, tuple(sorted(w.labels.items()))) for w in workers for r in w.runtimes}
    assert set(keys) == expected
    for group, (runtime, labels) in zip(agg.groups, keys, strict=True):
        members = [
            w
            for w in workers
            if runtime in w.runtimes and tuple(sorted(w.labels.items())) == labels
        ]
        cpus = [w.free_cpu for w in members]
        memory = [float(w.free_memory_mb) for w in members]
        assert group.workers == group.cpu.count == group.memory_mb.count == len(members)
        assert group.free_slots == sum(w.free_slots for w in members)
        assert group.tee == sum(1 for w in members if w.tee)
        assert group.accelerators == sum(1 for w in members if w.accelerators > 0)
        for stats, values in ((group.cpu, cpus), (group.memory_mb, memory)):
            assert stats.sum == pytest.approx(sum(values))
            assert stats.max == max(values)
            assert stats.mean == pytest.approx(statistics.fmean(values))
            assert stats.std == pytest.approx(
                statistics.pstdev(values), rel=1e-9, abs=1e-9 * max(1.0, *values)
            )

    shuffled = list(workers)
    rnd.shuffle(shuffled)
    again = aggregate(shuffled)
    assert [(g.runtime, g.labels, g.workers, g.free_slots) for g in again.groups] == [
        (g.runtime, g.labels, g.workers, g.free_slots) for g in agg.groups
    ]
    for a, b in zip(again.groups, agg.groups, strict=True):
        assert a.cpu.sum == b.cpu.sum  # fsum: exact, whatever the order
        assert a.cpu.std == pytest.approx(b.cpu.std, abs=1e-9)
    assert not significant_change(agg, again)
