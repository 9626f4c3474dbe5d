"""The root scheduler: every filter and its reason, both scores, plans, then properties."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeplane.errors import Invalid
from edgeplane.model.cluster import Location
from edgeplane.scheduling import (
    TEE_RULES,
    ClusterView,
    GeoPoint,
    GroupView,
    Plan,
    TaskDemand,
    WorkerView,
)
from edgeplane.scheduling.aggregate import aggregate, cluster_view
from edgeplane.scheduling.placement import (
    Ranking,
    distance_km,
    place_on_clusters,
    rank_clusters,
)
from edgeplane.scheduling.snapshot import Booked

BERLIN = (52.52, 13.405)
POTSDAM = (52.39, 13.065)  # ~27 km from Berlin
PARIS = (48.8566, 2.3522)  # ~878 km from Berlin


def group(
    runtime: str = "wasm",
    labels: Mapping[str, str] | None = None,
    *,
    workers: int = 2,
    slots: int = 4,
    cpu: float = 4.0,
    cpu_max: float = 2.0,
    memory: float = 4096.0,
    memory_max: float = 2048.0,
    tee: int = 0,
    bridge: int = 0,
) -> GroupView:
    return GroupView(
        runtime=runtime,
        labels=labels or {},
        workers=workers,
        free_slots=slots,
        free_cpu_sum=cpu,
        free_cpu_max=cpu_max,
        free_memory_sum=memory,
        free_memory_max=memory_max,
        tee=tee,
        bridge=bridge,
    )


def cluster(
    id: str,
    order: int,
    *groups: GroupView,
    labels: Mapping[str, str] | None = None,
    location: tuple[float, float] | None = None,
) -> ClusterView:
    return ClusterView(
        id=id,
        order=order,
        groups=groups or (group(),),
        labels=labels or {},
        location=location,
    )


def task(id: str = "t", runtime: str = "wasm", **kw: Any) -> TaskDemand:
    return TaskDemand(id, runtime, **kw)


def ranked(clusters: Sequence[ClusterView], t: TaskDemand, *, pack: bool = False) -> list[str]:
    ranking = rank_clusters(clusters, t, pack=pack)
    assert (ranking.reason is None) == bool(ranking.candidates)
    return list(ranking.candidates)


def reason(clusters: Sequence[ClusterView], t: TaskDemand) -> str | None:
    ranking = rank_clusters(clusters, t)
    assert not ranking.candidates
    return ranking.reason


# --- basics --------------------------------------------------------------------------


def test_ranking_is_a_frozen_value() -> None:
    ranking = rank_clusters([cluster("c1", 0)], task())
    assert ranking == Ranking(("c1",), None)
    with pytest.raises(AttributeError):
        ranking.reason = "x"  # type: ignore[misc]


def test_no_cluster_online() -> None:
    assert reason([], task()) == "no cluster online"
    plan = place_on_clusters([], [task("a"), task("b")])
    assert plan == Plan(
        assignments=(), waiting={"a": "no cluster online", "b": "no cluster online"}, cursor=0
    )


def test_duplicate_ids_are_invalid() -> None:
    with pytest.raises(Invalid) as caught:
        rank_clusters([cluster("c", 0), cluster("c", 1)], task())
    assert caught.value.field == "clusters"
    with pytest.raises(Invalid) as caught:
        place_on_clusters([cluster("c", 0)], [task("t"), task("t")])
    assert caught.value.field == "tasks"


def test_distance_km_is_great_circle() -> None:
    assert distance_km(*BERLIN, *BERLIN) == 0.0
    assert distance_km(*BERLIN, *PARIS) == pytest.approx(878, abs=3)
    assert distance_km(*BERLIN, *POTSDAM) == pytest.approx(27, abs=1)
    assert distance_km(0.0, 0.0, 0.0, 180.0) == pytest.approx(20015, abs=5)


# --- filters and their reasons -------------------------------------------------------


def test_runtime_filter() -> None:
    clusters = [cluster("h", 0, group("host")), cluster("w", 1, group("wasm"))]
    assert ranked(clusters, task(runtime="wasm")) == ["w"]
    assert reason(clusters, task(runtime="container")) == "no cluster offers runtime 'container'"


def test_a_group_without_workers_offers_nothing() -> None:
    clusters = [cluster("c", 0, group("wasm", workers=0, slots=0))]
    assert reason(clusters, task()) == "no cluster offers runtime 'wasm'"


def test_labels_match_group_labels_or_cluster_labels() -> None:
    clusters = [
        cluster("by-group", 0, group(labels={"site": "a"})),
        cluster("by-cluster", 1, group(), labels={"site": "a"}),
        cluster("mixed", 2, group(labels={"zone": "1"}), labels={"site": "a"}),
        cluster("other", 3, group(labels={"site": "b"})),
    ]
    assert ranked(clusters, task(labels={"site": "a"})) == ["by-group", "by-cluster", "mixed"]
    assert ranked(clusters, task(labels={"site": "a", "zone": "1"})) == ["mixed"]


def test_labels_must_meet_within_one_group_offering_the_runtime() -> None:
    split = cluster("split", 0, group(labels={"site": "a"}), group(labels={"zone": "1"}))
    host = cluster("host", 1, group("host", labels={"site": "a", "zone": "1"}), group("wasm"))
    wanted = task(labels={"site": "a", "zone": "1"})
    assert reason([split, host], wanted) == (
        "no cluster has workers with runtime 'wasm' and labels site=a, zone=1"
    )


def test_labels_reason_without_any_labelled_worker() -> None:
    clusters = [cluster("c", 0, group(labels={"site": "b"}))]
    assert (
        reason(clusters, task(labels={"site": "a"})) == "no cluster has workers with labels site=a"
    )


def test_tee_required_needs_a_group_with_a_tee() -> None:
    clusters = [cluster("plain", 0, group()), cluster("secure", 1, group(tee=1))]
    assert ranked(clusters, task(tee="required")) == ["secure"]
    assert reason(clusters[:1], task(tee="required")) == "no cluster has a worker with a TEE"
    host_tee = cluster("host-tee", 2, group("host", tee=1))
    assert reason([clusters[0], host_tee], task(tee="required")) == (
        "no cluster has a worker with runtime 'wasm' and a TEE"
    )


def test_tee_none_needs_a_group_with_a_worker_without_tee() -> None:
    clusters = [
        cluster("all-tee", 0, group(workers=2, tee=2)),
        cluster("some-tee", 1, group(workers=2, tee=1)),
    ]
    assert ranked(clusters, task(tee="none")) == ["some-tee"]
    assert reason(clusters[:1], task(tee="none")) == "no cluster has a worker without a TEE"
    assert ranked(clusters, task(tee="any")) == ["all-tee", "some-tee"]


def test_tee_reason_names_labels_when_they_narrowed_the_pool() -> None:
    clusters = [cluster("c", 0, group(labels={"site": "a"}), group(labels={"site": "b"}, tee=1))]
    assert reason(clusters, task(labels={"site": "a"}, tee="required")) == (
        "no cluster has a worker with runtime 'wasm', labels site=a and a TEE"
    )


def test_a_bridge_task_needs_a_group_with_a_bridge_worker() -> None:
    """``network: bridge``: only clusters whose aggregate counts a worker with a bridge
    network (a worker without one would fail it ``no_network``)."""
    plain = cluster("plain", 0, group("container", slots=8))
    bridged = cluster("bridged", 1, group("container", slots=1, bridge=1))
    bridge_task = task(runtime="container", bridge=True)
    assert ranked([plain, bridged], bridge_task) == ["bridged"]
    assert ranked([plain, bridged], task(runtime="container")) == ["plain", "bridged"]
    why = "(the task has network: bridge)"
    assert reason([plain], bridge_task) == f"no cluster has a worker with a bridge network {why}"
    wasm_bridge = cluster("wasm-bridge", 2, group("wasm", bridge=1))
    assert reason([plain, wasm_bridge], bridge_task) == (
        f"no cluster has a worker with runtime 'container' and a bridge network {why}"
    )
    # a plan: the bridged cluster takes them all (queueing past its one free slot)
    batch = [task(f"t{i}", runtime="container", seq=i, bridge=True) for i in range(3)]
    plan = place_on_clusters([plain, bridged], batch)
    assert {c for _, c in plan.assignments} == {"bridged"} and not plan.waiting


def test_a_booked_bridge_task_counts_against_a_group_with_a_bridge() -> None:
    """A bridge task sent since the last aggregate is booked on the group that could run
    it, not on a bridgeless one the cluster would never use for it."""
    c = cluster(
        "c",
        0,
        group("container", {"net": "no"}, slots=1),
        group("container", {"net": "yes"}, slots=1, bridge=1),
    )
    d = cluster("d", 1, group("container", slots=1, bridge=1))
    booked = replace(c, inflight=(Booked("container", bridge=True),))
    bridge_task = task(runtime="container", bridge=True)
    assert ranked([c, d], bridge_task) == ["c", "d"]
    assert ranked([booked, d], bridge_task) == ["d", "c"]  # c's bridge worker is taken


def test_geo_radius() -> None:
    clusters = [
        cluster("paris", 0, location=PARIS),
        cluster("potsdam", 1, location=POTSDAM),
        cluster("nowhere", 2),
        cluster("berlin", 3, location=BERLIN),
    ]
    near_berlin = GeoPoint(lat=52.5, lon=13.4, radius_km=50)
    assert ranked(clusters, task(geo=near_berlin)) == ["potsdam", "berlin"]
    tight = GeoPoint(lat=52.5, lon=13.4, radius_km=5)
    assert ranked(clusters, task(geo=tight)) == ["berlin"]
    assert ranked(clusters, task(geo=GeoPoint(52.5, 13.4, 1000))) == ["paris", "potsdam", "berlin"]
    assert reason(clusters[:1] + clusters[2:3], task(geo=near_berlin)) == (
        "no cluster within 50 km of (52.5, 13.4)"
    )


def test_geo_reason_names_the_radius_only_when_a_cluster_outside_it_would_do() -> None:
    clusters = [
        cluster("paris", 0, location=PARIS),
        cluster("berlin", 1, group("host"), location=BERLIN),
    ]
    near_berlin = GeoPoint(52.5, 13.4, 50)
    assert reason(clusters, task(geo=near_berlin)) == (
        "no cluster within 50 km of (52.5, 13.4) offers runtime 'wasm'"
    )
    assert reason(clusters, task("t", "container", geo=near_berlin)) == (
        "no cluster offers runtime 'container'"
    )


def test_fits_max_free_cpu_and_memory() -> None:
    clusters = [
        cluster("small", 0, group(cpu=8.0, cpu_max=1.0, memory_max=8192)),
        cluster("big", 1, group(cpu=4.0, cpu_max=4.0, memory_max=512)),
    ]
    assert ranked(clusters, task(cpu=2.0)) == ["big"]
    assert ranked(clusters, task(memory_mb=1024)) == ["small"]
    assert reason(clusters, task(cpu=2.0, memory_mb=1024)) == (
        "no cluster has a worker with 2 free cpu and 1024 MB free memory"
    )
    assert reason(clusters, task(cpu=4.5)) == "no cluster has a worker with 4.5 free cpu"
    assert (
        reason(clusters, task(memory_mb=9000)) == "no cluster has a worker with 9000 MB free memory"
    )


def test_fit_reason_names_what_narrowed_the_pool() -> None:
    clusters = [cluster("c", 0, group(cpu_max=1.0), group("host", cpu_max=4.0, cpu=4.0))]
    assert (
        reason(clusters, task(cpu=4))
        == "no cluster has a worker with runtime 'wasm' and 4 free cpu"
    )


def test_cpu_fit_forgives_float_drift() -> None:
    clusters = [cluster("c", 0, group(cpu=0.3, cpu_max=0.1 + 0.2 - 1e-12))]
    assert ranked(clusters, task(cpu=0.3)) == ["c"]


def test_allowed_clusters() -> None:
    clusters = [cluster("a", 0), cluster("b", 1), cluster("c", 2, group("host"))]
    assert ranked(clusters, task(clusters={"b", "c", "gone"})) == ["b"]
    assert (
        reason(clusters, task(clusters={"x", "y"}))
        == "none of the allowed clusters (x, y) is online"
    )
    assert reason(clusters, task(clusters={"c"})) == "no allowed cluster offers runtime 'wasm'"


def test_excluded_clusters_and_the_rejection_reason() -> None:
    clusters = [cluster("c1", 0), cluster("c2", 1), cluster("h", 2, group("host"))]
    assert ranked(clusters, task(exclude={"c1"})) == ["c2"]
    assert reason(clusters, task(exclude={"c2", "c1"})) == "rejected by c1, c2"


def test_rejection_falls_back_to_the_next_cluster_in_rank_order() -> None:
    clusters = [cluster(f"c{i}", i, group(slots=10 - i)) for i in range(4)]
    t = task()
    first = rank_clusters(clusters, t).candidates
    assert first == ("c0", "c1", "c2", "c3")
    tried: list[str] = []
    while True:
        ranking = rank_clusters(clusters, replace(t, exclude=frozenset(tried)))
        if not ranking.candidates:
            break
        assert ranking.candidates == first[len(tried) :]
        tried.append(ranking.candidates[0])
    assert tried == list(first)
    assert ranking.reason == "rejected by c0, c1, c2, c3"


def test_pinned_cluster_is_pass_through() -> None:
    clusters = [cluster("host-only", 0, group("host", slots=0)), cluster("free", 1)]
    pinned = task(cluster_id="host-only", cpu=64, labels={"site": "z"}, exclude={"host-only"})
    assert rank_clusters(clusters, pinned) == Ranking(("host-only",), None)
    assert rank_clusters(clusters, replace(pinned, cluster_id="gone")) == Ranking(
        (), "pinned cluster gone is not online"
    )
    plan = place_on_clusters(clusters, [pinned, replace(pinned, id="u", cluster_id="gone")])
    assert plan.assignments == (("t", "host-only"),)
    assert plan.waiting == {"u": "pinned cluster gone is not online"}


def test_pinned_tasks_use_up_capacity_of_their_cluster() -> None:
    clusters = [cluster("a", 0, group(slots=2)), cluster("b", 1, group(slots=1))]
    tasks = [task("p1", cluster_id="a", priority=90), task("p2", cluster_id="a", priority=90)]
    plan = place_on_clusters(clusters, [*tasks, task("free")])
    assert dict(plan.assignments)["free"] == "b"


# --- scores --------------------------------------------------------------------------


def test_spread_prefers_most_free_slots_then_cpu_then_memory_then_order_then_id() -> None:
    clusters = [
        cluster("few", 0, group(slots=1)),
        cluster("many", 1, group(slots=9)),
        cluster("many-cpu", 2, group(slots=9, cpu=8.0)),
        cluster("many-cpu-mem", 3, group(slots=9, cpu=8.0, memory=9000)),
        cluster("b-tie", 4, group(slots=5)),
        cluster("a-tie", 4, group(slots=5)),
        cluster("z-early", 3, group(slots=5)),
    ]
    assert ranked(clusters, task()) == [
        "many-cpu-mem",
        "many-cpu",
        "many",
        "z-early",
        "a-tie",
        "b-tie",
        "few",
    ]


def test_pack_prefers_fewest_free_slots_above_zero() -> None:
    clusters = [
        cluster("full", 0, group(slots=0)),
        cluster("many", 1, group(slots=9)),
        cluster("one", 2, group(slots=1)),
        cluster("two", 3, group(slots=2)),
        cluster("two-less-cpu", 4, group(slots=2, cpu=1.0, cpu_max=1.0)),
    ]
    assert ranked(clusters, task(), pack=True) == ["one", "two-less-cpu", "two", "many", "full"]


def test_full_clusters_still_rank_but_after_all_with_free_slots() -> None:
    clusters = [
        cluster("full-big", 0, group(slots=0, cpu=64.0)),
        cluster("one", 1, group(slots=1)),
    ]
    assert ranked(clusters, task()) == ["one", "full-big"]
    assert ranked(clusters, task(), pack=True) == ["one", "full-big"]


def test_only_matching_groups_count_for_the_score() -> None:
    clusters = [
        cluster("host-heavy", 0, group("wasm", slots=1), group("host", slots=50)),
        cluster(
            "labelled", 1, group("wasm", slots=3, labels={"site": "a"}), group("wasm", slots=40)
        ),
        cluster("wasm", 2, group("wasm", slots=2)),
    ]
    assert ranked(clusters, task(labels={"site": "a"})) == ["labelled"]
    assert ranked(clusters[::2], task()) == ["wasm", "host-heavy"]
    # Groups too small for the task do not count either.
    big = [
        cluster("small-many", 0, group(slots=30, cpu_max=1.0), group(slots=1, cpu_max=4.0)),
        cluster("big-few", 1, group(slots=2, cpu_max=4.0)),
    ]
    assert ranked(big, task(cpu=3.0)) == ["big-few", "small-many"]


# --- plans ---------------------------------------------------------------------------


def test_plan_places_by_priority_then_seq() -> None:
    clusters = [cluster("only", 0, group(slots=1, cpu=1.0, cpu_max=1.0))]
    tasks = [
        task("low", priority=10, cpu=1.0),
        task("late", priority=90, seq=2.0, cpu=1.0),
        task("early", priority=90, seq=1.0, cpu=1.0),
    ]
    plan = place_on_clusters(clusters, tasks)
    assert plan.assignments == (("early", "only"),)
    assert plan.waiting == {
        "late": "no cluster has a worker with 1 free cpu",
        "low": "no cluster has a worker with 1 free cpu",
    }
    assert plan.cursor == 0


def test_plan_spreads_a_batch_as_capacity_shrinks() -> None:
    clusters = [cluster("a", 0, group(slots=3)), cluster("b", 1, group(slots=2))]
    plan = place_on_clusters(clusters, [task(f"t{i}", seq=i) for i in range(5)])
    assert [c for _, c in plan.assignments] == ["a", "a", "b", "a", "b"]
    assert not plan.waiting


def test_plan_packs_a_batch_onto_the_fullest_cluster_first() -> None:
    clusters = [cluster("a", 0, group(slots=3)), cluster("b", 1, group(slots=2))]
    plan = place_on_clusters(clusters, [task(f"t{i}", seq=i) for i in range(5)], pack=True)
    assert [c for _, c in plan.assignments] == ["b", "b", "a", "a", "a"]


def test_plan_queues_on_full_clusters_least_queued_first() -> None:
    clusters = [cluster("a", 0, group(slots=1)), cluster("b", 1, group(slots=0))]
    plan = place_on_clusters(clusters, [task(f"t{i}", seq=i) for i in range(5)])
    assert [c for _, c in plan.assignments] == ["a", "a", "b", "a", "b"]


def test_plan_takes_cpu_and_memory_from_the_chosen_group() -> None:
    # 3 cores free in total, at most 2 on one worker: two 1.5-core tasks may fit (one
    # per worker), a third cannot.
    clusters = [cluster("c", 0, group(slots=10, cpu=3.0, cpu_max=2.0))]
    tasks = [task(f"t{i}", seq=i, cpu=1.5) for i in range(3)]
    plan = place_on_clusters(clusters, tasks)
    assert [t for t, _ in plan.assignments] == ["t0", "t1"]
    assert plan.waiting == {"t2": "no cluster has a worker with 1.5 free cpu"}
    memory = [cluster("m", 0, group(slots=10, memory=1000.0, memory_max=600.0))]
    plan = place_on_clusters(memory, [task(f"t{i}", seq=i, memory_mb=400) for i in range(3)])
    assert len(plan.assignments) == 2


def test_plan_shrinking_moves_tasks_to_the_next_cluster() -> None:
    clusters = [
        cluster("a", 0, group(slots=5, cpu=2.0, cpu_max=2.0)),
        cluster("b", 1, group(slots=1, cpu=8.0, cpu_max=8.0)),
    ]
    plan = place_on_clusters(clusters, [task(f"t{i}", seq=i, cpu=1.0) for i in range(4)])
    assert [c for _, c in plan.assignments] == ["a", "a", "b", "b"]


def test_plan_within_a_cluster_books_the_group_it_would_pick() -> None:
    clusters = [
        cluster("c", 0, group(slots=1, labels={"site": "a"}), group(slots=2, labels={"site": "b"})),
        cluster("d", 1, group(slots=2, labels={"site": "a"})),
    ]
    tasks = [task("any1", seq=0), task("any2", seq=1), task("a", seq=2, labels={"site": "a"})]
    plan = place_on_clusters(clusters, tasks)
    # any1 → c (3 slots), booked on its roomiest group, site=b (2 → 1); any2 → c again
    # (2 slots each, but c has more free cpu), booked on the first of its equal groups,
    # site=a, so the site=a task finds c's site=a group full and goes to d.
    assert dict(plan.assignments) == {"any1": "c", "any2": "c", "a": "d"}


def test_plan_waiting_reason_is_cached_per_requirement() -> None:
    clusters = [cluster("c", 0, group("host"))]
    plan = place_on_clusters(clusters, [task(f"t{i}", seq=i) for i in range(3)])
    assert set(plan.waiting.values()) == {"no cluster offers runtime 'wasm'"}
    assert list(plan.waiting) == ["t0", "t1", "t2"]


# --- properties ----------------------------------------------------------------------

RUNTIMES = ("wasm", "host", "container")
LABEL_KEYS = ("site", "zone")
LABEL_VALUES = ("a", "b")
SLACK = 1e-6
PLACES = (BERLIN, POTSDAM, PARIS, None)


def _worker(
    runtimes: list[str],
    labels: dict[str, str],
    tee: bool,
    slots: int,
    cpu: float,
    memory: int,
    bridge: bool = False,
) -> WorkerView:
    return WorkerView(
        "",
        frozenset(runtimes),
        labels,
        frozenset({"sgx"} if tee else ()),
        slots,
        cpu,
        memory,
        0,
        bridge=bridge,
    )


WORKER = st.builds(
    _worker,
    runtimes=st.lists(st.sampled_from(RUNTIMES), min_size=1, max_size=2, unique=True),
    labels=st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=1),
    tee=st.booleans(),
    slots=st.integers(0, 3),
    cpu=st.sampled_from((0.0, 0.5, 1.0, 2.0)),
    memory=st.sampled_from((0, 256, 1024)),
    bridge=st.booleans(),
)


@st.composite
def clusters(draw: st.DrawFn) -> list[ClusterView]:
    found = []
    for i in range(draw(st.integers(0, 6))):
        workers = draw(st.lists(WORKER, max_size=4))
        place = draw(st.sampled_from(PLACES))
        found.append(
            cluster_view(
                f"c{i}",
                draw(st.integers(0, 3)),
                aggregate(workers),
                labels=draw(
                    st.dictionaries(
                        st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=1
                    )
                ),
                location=None if place is None else Location(lat=place[0], lon=place[1]),
            )
        )
    return found


IDS = st.sampled_from(("c0", "c1", "c2", "c7"))
TASK = st.builds(
    TaskDemand,
    id=st.just(""),
    runtime=st.sampled_from(RUNTIMES),
    priority=st.sampled_from((0, 50, 50, 100)),
    seq=st.integers(0, 5).map(float),
    labels=st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=2),
    tee=st.sampled_from(TEE_RULES),
    cpu=st.sampled_from((0.0, 0.0, 0.5, 1.0, 2.5)),
    memory_mb=st.sampled_from((0, 0, 256, 2048)),
    cluster_id=st.one_of(st.none(), st.none(), st.none(), IDS),
    clusters=st.one_of(st.just(frozenset[str]()), st.frozensets(IDS, max_size=2)),
    exclude=st.one_of(st.just(frozenset[str]()), st.frozensets(IDS, max_size=2)),
    geo=st.one_of(
        st.none(),
        st.builds(GeoPoint, st.just(52.5), st.just(13.4), st.sampled_from((5.0, 50.0, 1000.0))),
    ),
    bridge=st.booleans(),
)


def tasks_list() -> st.SearchStrategy[list[TaskDemand]]:
    return st.lists(TASK, max_size=10).map(
        lambda shapes: [replace(shape, id=f"t{j}") for j, shape in enumerate(shapes)]
    )


def group_passes(c: ClusterView, g: GroupView, t: TaskDemand) -> bool:
    """An oracle written apart from the scheduler's filters (capacity as in the view)."""
    if g.runtime != t.runtime or g.workers == 0:
        return False
    if any(c.labels.get(k) != v and g.labels.get(k) != v for k, v in t.labels.items()):
        return False
    if t.tee == "required" and g.tee == 0:
        return False
    if t.tee == "none" and g.workers == g.tee:
        return False
    if t.bridge and g.bridge == 0:
        return False
    if t.cpu > 0 and g.free_cpu_max + SLACK < t.cpu:
        return False
    return not (t.memory_mb > 0 and g.free_memory_max < t.memory_mb)


def passes(c: ClusterView, t: TaskDemand) -> bool:
    if t.clusters and c.id not in t.clusters:
        return False
    if c.id in t.exclude:
        return False
    if t.geo is not None and (
        c.location is None or distance_km(t.geo.lat, t.geo.lon, *c.location) > t.geo.radius_km
    ):
        return False
    return any(group_passes(c, g, t) for g in c.groups)


def free_slots(c: ClusterView, t: TaskDemand) -> int:
    return sum(g.free_slots for g in c.groups if group_passes(c, g, t))


@settings(max_examples=300, deadline=None)
@given(clusters(), TASK, st.booleans(), st.randoms(use_true_random=False))
def test_property_ranking_is_exactly_the_qualifying_clusters_in_score_order(
    views: list[ClusterView], t: TaskDemand, pack: bool, rnd: random.Random
) -> None:
    ranking = rank_clusters(views, t, pack=pack)
    assert (ranking.reason is None) == bool(ranking.candidates)
    by_id = {c.id: c for c in views}
    if t.cluster_id is not None:
        expected = (t.cluster_id,) if t.cluster_id in by_id else ()
        assert ranking.candidates == expected
        return
    assert set(ranking.candidates) == {c.id for c in views if passes(c, t)}
    slots = [free_slots(by_id[c], t) for c in ranking.candidates]
    roomy = [s for s in slots if s > 0]
    assert slots[: len(roomy)] == roomy  # every cluster with a free slot comes first
    assert roomy == sorted(roomy, reverse=not pack)
    # Independent of the order clusters are listed in.
    shuffled = list(views)
    rnd.shuffle(shuffled)
    assert rank_clusters(shuffled, t, pack=pack) == ranking
    # A rejection removes the first candidate and keeps the rest in order.
    if ranking.candidates:
        again = rank_clusters(
            views, replace(t, exclude=t.exclude | {ranking.candidates[0]}), pack=pack
        )
        assert again.candidates == ranking.candidates[1:]


@settings(max_examples=300, deadline=None)
@given(clusters(), tasks_list(), st.booleans(), st.randoms(use_true_random=False))
def test_property_plans_respect_every_filter(
    views: list[ClusterView], tasks: list[TaskDemand], pack: bool, rnd: random.Random
) -> None:
    plan = place_on_clusters(views, tasks, pack=pack)
    assert plan.cursor == 0
    assigned = [t for t, _ in plan.assignments]
    assert len(assigned) == len(set(assigned))
    assert set(assigned).isdisjoint(plan.waiting)
    assert set(assigned) | set(plan.waiting) == {t.id for t in tasks}
    assert all(isinstance(r, str) and r for r in plan.waiting.values())

    by_id = {c.id: c for c in views}
    by_task = {t.id: t for t in tasks}
    cpu: dict[str, float] = defaultdict(float)
    for task_id, cluster_id in plan.assignments:
        t = by_task[task_id]
        if t.cluster_id is not None:
            assert cluster_id == t.cluster_id
        else:
            assert passes(by_id[cluster_id], t)
            cpu[cluster_id] += t.cpu
    for cluster_id, booked in cpu.items():
        assert booked <= sum(g.free_cpu_sum for g in by_id[cluster_id].groups) + SLACK
    for task_id, why in plan.waiting.items():
        t = by_task[task_id]
        if t.cluster_id is not None:
            assert t.cluster_id not in by_id
            assert why == f"pinned cluster {t.cluster_id} is not online"
        elif t.cpu == 0 and t.memory_mb == 0:
            # Only room shrinks within a plan: a task asking none waits only when no
            # cluster ever qualified.
            assert not any(passes(c, t) for c in views)

    # Higher priority first: tasks are placed in (-priority, seq) order.
    order = {t.id: (-t.priority, t.seq) for t in tasks}
    keys = [order[t] for t in assigned]
    assert keys == sorted(keys)

    # Deterministic, and independent of the order clusters are listed in.
    assert place_on_clusters(views, tasks, pack=pack) == plan
    shuffled = list(views)
    rnd.shuffle(shuffled)
    assert place_on_clusters(shuffled, tasks, pack=pack) == plan


@settings(max_examples=200, deadline=None)
@given(clusters(), TASK, st.booleans())
def test_property_one_task_goes_where_the_ranking_says(
    views: list[ClusterView], t: TaskDemand, pack: bool
) -> None:
    ranking = rank_clusters(views, t, pack=pack)
    plan = place_on_clusters(views, [t], pack=pack)
    if ranking.candidates:
        assert plan.assignments == ((t.id, ranking.candidates[0]),)
    else:
        assert plan.waiting == {t.id: ranking.reason}


@settings(max_examples=300, deadline=None)
@given(st.lists(WORKER, max_size=6), TASK)
def test_property_a_cluster_with_a_fitting_worker_is_always_a_candidate(
    workers: list[WorkerView], t: TaskDemand
) -> None:
    """The aggregate never hides capacity: if one worker could run the task, the root
    ranks its cluster (the converse need not hold: maxima may come from two workers)."""
    t = replace(t, cluster_id=None, clusters=frozenset(), exclude=frozenset(), geo=None)
    view = cluster_view("c", 0, aggregate(workers))

    def fits(w: WorkerView) -> bool:
        return (
            t.runtime in w.runtimes
            and all(w.labels.get(k) == v for k, v in t.labels.items())
            and not (t.tee == "required" and not w.tee)
            and not (t.tee == "none" and w.tee)
            and (w.bridge or not t.bridge)
            and w.free_cpu + SLACK >= t.cpu
            and w.free_memory_mb >= t.memory_mb
        )

    if any(map(fits, workers)):
        assert rank_clusters([view], t).candidates == ("c",)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6), st.integers(0, 30), st.booleans())
def test_property_spread_over_equal_clusters_is_even(n: int, tasks: int, pack: bool) -> None:
    views = [cluster(f"c{i}", i, group(slots=100, cpu=100.0)) for i in range(n)]
    plan = place_on_clusters(
        views, [task(f"t{j}", seq=j, cpu=1.0) for j in range(tasks)], pack=pack
    )
    counts = Counter(c for _, c in plan.assignments)
    assert sum(counts.values()) == tasks
    if pack:
        assert len(counts) == min(1, tasks)
    else:
        assert max(counts.values(), default=0) - min(counts.values(), default=0) <= 1


# --- artifact preference (soft) ----------------------------------------------------------

DIGESTS = ("a" * 64, "b" * 64)


def test_a_cluster_holding_the_artifact_wins_among_those_with_room() -> None:
    roomy = cluster("c0", 0, group(slots=8))
    holder = replace(cluster("c1", 1, group(slots=1)), artifacts=frozenset({DIGESTS[0]}))
    full_holder = replace(cluster("c2", 2, group(slots=0)), artifacts=frozenset({DIGESTS[0]}))
    wanted = task(artifact=DIGESTS[0])
    assert ranked([roomy, holder, full_holder], wanted) == ["c1", "c0", "c2"]
    assert ranked([roomy, holder, full_holder], task()) == ["c0", "c1", "c2"]
    # a plan: the holder while it has room, then the usual order; nobody waits
    batch = [task(f"t{i}", seq=i, artifact=DIGESTS[0]) for i in range(3)]
    plan = place_on_clusters([roomy, holder, full_holder], batch)
    assert dict(plan.assignments) == {"t0": "c1", "t1": "c0", "t2": "c0"}


def test_aggregate_reports_the_artifacts_held_by_most_workers_bounded() -> None:
    views = [
        replace(_worker(["wasm"], {}, False, 1, 1.0, 256), artifacts=frozenset(DIGESTS)),
        replace(_worker(["wasm"], {}, False, 1, 1.0, 256), artifacts=frozenset(DIGESTS[1:])),
    ]
    agg = aggregate(views)
    assert agg.artifacts == [DIGESTS[1], DIGESTS[0]]
    assert cluster_view("c", 0, agg).artifacts == frozenset(DIGESTS)
    many = [replace(views[0], artifacts=frozenset(f"{i:064x}" for i in range(100)))]
    assert len(aggregate(many).artifacts) == 64
    # what a cluster sends is bounded and checked at the root too
    assert type(agg).model_validate({"artifacts": ["x", DIGESTS[0], 3]}).artifacts == [DIGESTS[0]]


@settings(max_examples=300, deadline=None)
@given(
    clusters(),
    TASK,
    st.booleans(),
    st.lists(st.frozensets(st.sampled_from(DIGESTS)), min_size=7, max_size=7),
    st.sampled_from(DIGESTS),
)
def test_property_artifact_is_only_a_tie_breaker_at_the_root(
    views: list[ClusterView],
    t: TaskDemand,
    pack: bool,
    held: list[frozenset[str]],
    wanted: str,
) -> None:
    views = [replace(c, artifacts=h) for c, h in zip(views, held, strict=False)]
    t = replace(t, id="t", artifact=wanted)
    plain = replace(t, artifact=None)
    ranking, plain_ranking = (
        rank_clusters(views, t, pack=pack),
        rank_clusters(views, plain, pack=pack),
    )
    # the same clusters qualify, for the same reason when none does
    assert set(ranking.candidates) == set(plain_ranking.candidates)
    assert ranking.reason == plain_ranking.reason
    plan, plain_plan = (
        place_on_clusters(views, [t], pack=pack),
        place_on_clusters(views, [plain], pack=pack),
    )
    assert plan.waiting == plain_plan.waiting
    if not plan.assignments or t.cluster_id is not None:
        assert plan == plain_plan
        return
    by_id = {c.id: c for c in views}
    holders = [
        c.id for c in views if passes(c, t) and free_slots(c, t) > 0 and wanted in c.artifacts
    ]
    ((_, chosen),) = plan.assignments
    if holders:
        assert chosen in holders
        assert ranking.candidates[: len(holders)] == tuple(
            c for c in plain_ranking.candidates if c in holders
        )
    else:
        assert plan == plain_plan
        assert ranking == plain_ranking
    assert passes(by_id[chosen], t)


@settings(max_examples=200, deadline=None)
@given(clusters(), TASK, st.booleans())
def test_property_a_bridge_task_waits_naming_the_bridge_when_that_is_missing(
    views: list[ClusterView], shape: TaskDemand, pack: bool
) -> None:
    """A task with ``network: bridge`` that no cluster qualifies for waits at the root;
    its reason names the bridge when a cluster would qualify but for it, and never blames
    the bridge when every worker has one (the filter left nobody out)."""
    t = replace(shape, id="t", bridge=True, cluster_id=None, exclude=frozenset())
    plain = replace(t, bridge=False)
    ranking = rank_clusters(views, t, pack=pack)
    if any(passes(c, t) for c in views):
        assert ranking.candidates
        return
    assert not ranking.candidates and ranking.reason is not None
    if any(passes(c, plain) for c in views):
        assert "bridge network" in ranking.reason, ranking.reason
    if all(g.bridge == g.workers for c in views for g in c.groups):
        assert "(the task has network: bridge)" not in ranking.reason, ranking.reason
