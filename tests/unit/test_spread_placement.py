"""Spread and anti-affinity in the pure schedulers: the cluster's (``make_plan``, over
workers) and the root's (``place_on_clusters``, over clusters), examples then properties.

Also the root's in-flight booking: tasks sent to a cluster after its last aggregate are
booked before anything else is placed, so tasks placed one call at a time go where one
batch would have put them (before, 8 of 8 went to one of two equal clusters)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeplane.errors import Invalid
from edgeplane.root.reconcile import ANTI_AFFINITY_REASON
from edgeplane.scheduling import (
    STRATEGIES,
    ClusterView,
    GroupView,
    Plan,
    TaskDemand,
    WorkerView,
    make_plan,
)
from edgeplane.scheduling.placement import place_on_clusters
from edgeplane.scheduling.snapshot import Booked

KEY = "default/app/web"
OTHER = "default/app/db"
DIGEST = "d" * 64


def worker(id: str, order: int, *, slots: int = 8, memory: int = 4096, **kw: Any) -> WorkerView:
    return WorkerView(
        id=id,
        runtimes=frozenset(kw.pop("runtimes", ("wasm",))),
        labels=kw.pop("labels", {}),
        tee=frozenset(),
        free_slots=slots,
        free_cpu=kw.pop("cpu", 4.0),
        free_memory_mb=memory,
        order=order,
        **kw,
    )


def task(id: str, seq: float = 0.0, **kw: Any) -> TaskDemand:
    return TaskDemand(id, kw.pop("runtime", "wasm"), seq=seq, **kw)


def replica(id: str, seq: float = 0.0, *, key: str = KEY, **kw: Any) -> TaskDemand:
    return task(id, seq, spread=key, **kw)


def per_worker(plan: Plan) -> Counter[str]:
    return Counter(w for _, w in plan.assignments)


# --- the cluster: over workers ----------------------------------------------------------


def test_replicas_go_to_the_workers_running_fewest_of_their_group() -> None:
    workers = [worker("w0", 0), worker("w1", 1), worker("w2", 2)]
    live = {"w0": {KEY: 2}, "w1": {KEY: 1, OTHER: 5}}
    for strategy in STRATEGIES:
        plan = make_plan(strategy, workers, [replica(f"t{i}", i) for i in range(3)], spread=live)
        # w2 has none: it gets one, then w1 and w2 are level with w0 behind...
        assert per_worker(plan) == Counter({"w2": 2, "w1": 1}), strategy


def test_plain_tasks_ignore_spread_counts() -> None:
    workers = [worker("w0", 0), worker("w1", 1)]
    plan = make_plan("round-robin", workers, [task("t0"), task("t1")], spread={"w0": {KEY: 3}})
    assert dict(plan.assignments) == {"t0": "w0", "t1": "w1"}


def test_groups_are_counted_apart() -> None:
    workers = [worker("w0", 0), worker("w1", 1)]
    live = {"w0": {OTHER: 3}, "w1": {KEY: 1}}
    plan = make_plan("round-robin", workers, [replica("t", key=OTHER)], spread=live)
    assert dict(plan.assignments) == {"t": "w1"}


def test_spread_beats_pack_and_the_artifact_preference() -> None:
    digest = "a" * 64
    workers = [
        worker("tight", 0, memory=512, artifacts=frozenset({digest})),
        worker("roomy", 1, memory=4096),
    ]
    demands = [replica(f"t{i}", i, memory_mb=128, artifact=digest) for i in range(2)]
    plan = make_plan("resource-fit", workers, demands, pack=True)
    assert per_worker(plan) == Counter({"tight": 1, "roomy": 1})
    # among equally loaded workers, the holder still wins
    plan = make_plan("round-robin", workers, [replica("t", artifact=digest)], cursor=1)
    assert dict(plan.assignments) == {"t": "tight"}


def test_a_worker_without_room_does_not_count() -> None:
    workers = [worker("full", 0, slots=0), worker("busy", 1)]
    plan = make_plan("round-robin", workers, [replica("t")], spread={"busy": {KEY: 4}})
    assert dict(plan.assignments) == {"t": "busy"}  # soft: it never waits for the rule


def test_required_never_puts_two_on_one_worker() -> None:
    workers = [worker("w0", 0), worker("w1", 1), worker("w2", 2)]
    demands = [replica(f"t{i}", i, distinct=True) for i in range(4)]
    for strategy in STRATEGIES:
        plan = make_plan(strategy, workers, demands, spread={"w0": {KEY: 1}})
        assert per_worker(plan) == Counter({"w1": 1, "w2": 1}), strategy
        assert set(plan.waiting) == {"t2", "t3"}
        reason = plan.waiting["t3"]
        assert reason.startswith(ANTI_AFFINITY_REASON)
        assert "spread over workers" in reason and "'app/web'" in reason


def test_required_names_capacity_first_when_nobody_has_room() -> None:
    plan = make_plan("round-robin", [worker("w0", 0, slots=0)], [replica("t", distinct=True)])
    assert plan.waiting == {"t": "all eligible workers are busy"}


def test_required_over_clusters_allows_one_per_cluster() -> None:
    workers = [worker("w0", 0), worker("w1", 1)]
    demands = [replica(f"t{i}", i, distinct=True, spread_over="cluster") for i in range(2)]
    plan = make_plan("round-robin", workers, demands)
    assert len(plan.assignments) == 1
    assert "spread over clusters" in plan.waiting["t1"]
    assert not make_plan("round-robin", workers, demands[:1], spread={"w1": {KEY: 1}}).assignments


def test_spread_over_must_be_worker_or_cluster() -> None:
    with pytest.raises(Invalid) as caught:
        replica("t", spread_over="rack")
    assert caught.value.field == "spread.over"


# --- the cluster: properties ------------------------------------------------------------

RUNTIMES = ("wasm", "host")
SPREAD_WORKER = st.builds(
    lambda order, runtimes, slots, memory: worker(
        f"w{order}", order, runtimes=runtimes, slots=slots, memory=memory
    ),
    order=st.integers(0, 30),
    runtimes=st.frozensets(st.sampled_from(RUNTIMES), min_size=1),
    slots=st.integers(0, 3),
    memory=st.sampled_from((0, 256, 1024)),
)
SPREAD_WORKERS = st.lists(SPREAD_WORKER, max_size=6, unique_by=lambda w: w.order)
#: a worker's live tasks of each group (a key left out: none)
COUNTS = st.dictionaries(st.sampled_from((KEY, OTHER)), st.integers(1, 2))
Live = dict[str, dict[str, int]]
Scenario = tuple[str, list[WorkerView], Live, list[TaskDemand], int, bool]
SPREAD_TASK = st.builds(
    TaskDemand,
    id=st.just(""),
    runtime=st.sampled_from(RUNTIMES),
    priority=st.sampled_from((10, 50, 90)),
    seq=st.integers(0, 6).map(float),
    memory_mb=st.sampled_from((0, 0, 128, 512)),
    spread=st.sampled_from((None, KEY, KEY, OTHER)),
    spread_over=st.sampled_from(("worker", "worker", "cluster")),
    distinct=st.booleans(),
)


@st.composite
def spread_scenarios(draw: st.DrawFn) -> Scenario:
    workers = draw(SPREAD_WORKERS)
    live = {w.id: counts for w in workers if (counts := draw(COUNTS))}
    if draw(st.booleans()):
        live["gone"] = {KEY: 1}  # a worker not in the ring (offline): it counts nowhere
    shapes = draw(st.lists(SPREAD_TASK, max_size=12))
    tasks = [replace(shape, id=f"t{j}") for j, shape in enumerate(shapes)]
    return (
        draw(st.sampled_from(STRATEGIES)),
        workers,
        live,
        tasks,
        draw(st.integers(0, 31)),
        draw(st.booleans()),
    )


def _order(strategy: str, tasks: Sequence[TaskDemand]) -> list[TaskDemand]:
    if strategy == "round-robin":
        return sorted(tasks, key=lambda t: t.seq)
    return sorted(tasks, key=lambda t: (-t.priority, t.seq))


@settings(max_examples=400, deadline=None)
@given(spread_scenarios())
def test_property_each_replica_goes_to_a_least_loaded_worker_and_required_never_shares(
    scenario: Scenario,
) -> None:
    """Replayed in dispatch order against an oracle written apart from the scheduler: a
    task of a group goes to a worker with the fewest of its group among the eligible
    workers with room then; required never to one running one (nor, over clusters, into
    a cluster running one), and such a task waits for the rule only when that is why."""
    strategy, workers, live, tasks, cursor, pack = scenario
    plan = make_plan(strategy, workers, tasks, cursor=cursor, pack=pack, spread=live)
    resources = strategy == "resource-fit"
    by_task = {t.id: t for t in tasks}
    assert {t for t, _ in plan.assignments} | set(plan.waiting) == set(by_task)
    chosen = dict(plan.assignments)
    slots = {w.id: w.free_slots for w in workers}
    memory = {w.id: w.free_memory_mb for w in workers}
    counts = {w.id: Counter(live.get(w.id, {})) for w in workers}

    def room(w: WorkerView, t: TaskDemand) -> bool:
        fits = not resources or t.memory_mb == 0 or memory[w.id] >= t.memory_mb
        return t.runtime in w.runtimes and slots[w.id] > 0 and fits

    for t in _order(strategy, tasks):
        open_ = [w for w in workers if room(w, t)]
        key = t.spread
        if t.id in chosen:
            w_id = chosen[t.id]
            if key is not None:
                low = min(counts[w.id][key] for w in open_)
                assert counts[w_id][key] == low
                if t.distinct:
                    assert low == 0
                    if t.spread_over == "cluster":
                        assert not any(c[key] for c in counts.values())
                counts[w_id][key] += 1
            slots[w_id] -= 1
            if resources:
                memory[w_id] -= t.memory_mb
        else:
            why = plan.waiting[t.id]
            if why.startswith(ANTI_AFFINITY_REASON):
                # (a refusal stays for the rest of the plan, also once room ran out: its
                # "every eligible worker with room" still holds then)
                assert key is not None and t.distinct
                if t.spread_over == "worker":
                    assert all(counts[w.id][key] for w in open_)
                else:
                    assert any(c[key] for c in counts.values())
            else:
                assert not open_


@settings(max_examples=200, deadline=None)
@given(
    workers=st.integers(1, 8),
    replicas=st.integers(0, 40),
    cursor=st.integers(0, 10),
    strategy=st.sampled_from(STRATEGIES),
    pack=st.booleans(),
    memory=st.lists(st.sampled_from((1024, 2048, 4096)), min_size=8, max_size=8),
)
def test_property_n_replicas_over_w_workers_are_at_most_one_apart(
    workers: int, replicas: int, cursor: int, strategy: str, pack: bool, memory: list[int]
) -> None:
    """Whatever the strategy (bin-packing too) and however unequal the workers' free
    memory, max - min replicas per worker <= 1, and with W or fewer, all distinct."""
    ring = [worker(f"w{i}", i, slots=100, memory=memory[i]) for i in range(workers)]
    demands = [replica(f"t{j}", j, memory_mb=8) for j in range(replicas)]
    plan = make_plan(strategy, ring, demands, cursor=cursor, pack=pack)
    assert len(plan.assignments) == replicas
    counts = [per_worker(plan)[w.id] for w in ring]
    assert max(counts) - min(counts) <= 1
    distinct = make_plan(
        strategy, ring, [replace(d, distinct=True) for d in demands], cursor=cursor, pack=pack
    )
    assert len(distinct.assignments) == min(replicas, workers)
    assert max(per_worker(distinct).values(), default=0) <= 1


@settings(max_examples=150, deadline=None)
@given(spread_scenarios())
def test_property_without_groups_nothing_changes(scenario: Scenario) -> None:
    """Spread counts change nothing for tasks without a group."""
    strategy, workers, live, tasks, cursor, pack = scenario
    plain = [replace(t, spread=None, distinct=False) for t in tasks]
    assert make_plan(strategy, workers, plain, cursor=cursor, pack=pack, spread=live) == (
        make_plan(strategy, workers, plain, cursor=cursor, pack=pack)
    )


# --- the root: over clusters ------------------------------------------------------------


def group(
    runtime: str = "wasm",
    *,
    workers: int = 2,
    slots: int = 100,
    labels: Mapping[str, str] | None = None,
) -> GroupView:
    return GroupView(
        runtime=runtime,
        labels=labels or {},
        workers=workers,
        free_slots=slots,
        free_cpu_sum=8.0,
        free_cpu_max=4.0,
        free_memory_sum=8192.0,
        free_memory_max=4096.0,
    )


def cluster(id: str, order: int, *groups: GroupView, **kw: Any) -> ClusterView:
    return ClusterView(id=id, order=order, groups=groups or (group(),), **kw)


def per_cluster(plan: Plan) -> Counter[str]:
    return Counter(c for _, c in plan.assignments)


def test_root_prefers_the_cluster_with_fewest_replicas_per_eligible_worker() -> None:
    big = cluster("big", 0, group(workers=3, slots=10))
    small = cluster("small", 1, group(workers=1, slots=90))
    plan = place_on_clusters([big, small], [replica(f"t{i}", i) for i in range(4)])
    assert per_cluster(plan) == Counter({"big": 3, "small": 1})  # one per worker
    over_clusters = [replica(f"t{i}", i, spread_over="cluster") for i in range(4)]
    plan = place_on_clusters([big, small], over_clusters)
    assert per_cluster(plan) == Counter({"big": 2, "small": 2})


def test_root_counts_replicas_already_there() -> None:
    a = cluster("a", 0, spread={KEY: 2})
    b = cluster("b", 1, spread={OTHER: 7})
    plan = place_on_clusters([a, b], [replica(f"t{i}", i) for i in range(3)])
    assert [c for _, c in plan.assignments] == ["b", "b", "a"]


def test_root_required_over_workers_stops_at_the_workers_of_each_cluster() -> None:
    a = cluster("a", 0, group(workers=2))
    b = cluster("b", 1, group(workers=1), spread={KEY: 1})
    plan = place_on_clusters([a, b], [replica(f"t{i}", i, distinct=True) for i in range(3)])
    assert per_cluster(plan) == Counter({"a": 2})
    assert plan.waiting["t2"].startswith(ANTI_AFFINITY_REASON)
    assert "'app/web'" in plan.waiting["t2"]


def test_root_required_over_clusters_puts_one_in_each() -> None:
    clusters = [cluster(f"c{i}", i) for i in range(3)]
    demands = [replica(f"t{i}", i, distinct=True, spread_over="cluster") for i in range(4)]
    plan = place_on_clusters(clusters, demands)
    assert per_cluster(plan) == Counter({"c0": 1, "c1": 1, "c2": 1})
    assert "spread over clusters" in plan.waiting["t3"]


def test_root_spread_prefers_a_cluster_with_a_free_slot() -> None:
    full = cluster("full", 0, group(slots=0))
    busy = cluster("busy", 1, spread={KEY: 5})
    plan = place_on_clusters([full, busy], [replica("t")])
    assert dict(plan.assignments) == {"t": "busy"}


def test_root_pinned_replica_passes_through_and_counts() -> None:
    clusters = [cluster("a", 0), cluster("b", 1)]
    demands = [replica("t0", 0, cluster_id="a"), replica("t1", 1)]
    plan = place_on_clusters(clusters, demands)
    assert dict(plan.assignments) == {"t0": "a", "t1": "b"}


# --- the root: what it sent since the last aggregate ------------------------------------


def test_inflight_tasks_are_booked_on_their_cluster() -> None:
    """The reproduction: two equal clusters, tasks placed one call at a time (one
    submit each) with the aggregates unchanged in between."""
    clusters = [cluster("c1", 0), cluster("c2", 1)]
    sent: dict[str, list[Booked]] = {"c1": [], "c2": []}
    for i in range(8):
        views = [replace(c, inflight=tuple(sent[c.id])) for c in clusters]
        plan = place_on_clusters(views, [task(f"t{i}", i)])
        ((_, chosen),) = plan.assignments
        sent[chosen].append(Booked("wasm"))
    assert {c: len(b) for c, b in sent.items()} == {"c1": 4, "c2": 4}


def test_inflight_booking_follows_runtime_and_labels() -> None:
    clusters = [
        cluster("a", 0, group("wasm", slots=4), group("host", slots=4)),
        cluster("b", 1, group("wasm", slots=3), group("host", slots=4)),
    ]
    # three host tasks in flight on a: they do not make a's wasm group look fuller
    views = [replace(clusters[0], inflight=(Booked("host"),) * 3), clusters[1]]
    plan = place_on_clusters(views, [task("t")])
    assert dict(plan.assignments) == {"t": "a"}
    # a task whose runtime the cluster lacks books nothing
    views = [replace(clusters[0], inflight=(Booked("container"),) * 3), clusters[1]]
    assert dict(place_on_clusters(views, [task("t")]).assignments) == {"t": "a"}


ROOT_GROUP = st.builds(
    group,
    runtime=st.sampled_from(RUNTIMES),
    workers=st.integers(1, 3),
    slots=st.integers(0, 6),
)
ROOT_TASK = st.builds(
    TaskDemand,
    id=st.just(""),
    runtime=st.sampled_from(RUNTIMES),
    priority=st.just(50),
    spread=st.sampled_from((None, KEY, OTHER)),
    spread_over=st.sampled_from(("worker", "cluster")),
    distinct=st.booleans(),
    artifact=st.sampled_from((None, DIGEST)),
)


@st.composite
def root_scenarios(draw: st.DrawFn) -> tuple[list[ClusterView], list[TaskDemand]]:
    clusters = [
        cluster(
            f"c{i}",
            i,
            *draw(st.lists(ROOT_GROUP, min_size=1, max_size=2)),
            artifacts=draw(st.sampled_from((frozenset(), frozenset({DIGEST})))),
        )
        for i in range(draw(st.integers(1, 4)))
    ]
    shapes = draw(st.lists(ROOT_TASK, max_size=10))
    return clusters, [replace(s, id=f"t{j}", seq=float(j)) for j, s in enumerate(shapes)]


@settings(max_examples=300, deadline=None)
@given(root_scenarios(), st.booleans())
def test_property_one_call_per_task_with_inflight_equals_one_batch(
    scenario: tuple[list[ClusterView], list[TaskDemand]], pack: bool
) -> None:
    """Placing a batch task by task, each call seeing the earlier ones as in flight (and
    in its spread counts), gives the plan one call gives."""
    clusters, tasks = scenario
    whole = place_on_clusters(clusters, tasks, pack=pack)
    sent: dict[str, list[Booked]] = {c.id: [] for c in clusters}
    counts: dict[str, Counter[str]] = {c.id: Counter() for c in clusters}
    assignments = []
    waiting = {}
    for t in tasks:
        views = [replace(c, inflight=tuple(sent[c.id]), spread=counts[c.id]) for c in clusters]
        plan = place_on_clusters(views, [t], pack=pack)
        waiting.update(plan.waiting)
        for task_id, chosen in plan.assignments:
            assignments.append((task_id, chosen))
            sent[chosen].append(Booked(t.runtime))
            if t.spread is not None:
                counts[chosen][t.spread] += 1
    assert tuple(assignments) == whole.assignments
    assert waiting == dict(whole.waiting)


@settings(max_examples=300, deadline=None)
@given(root_scenarios(), st.booleans())
def test_property_root_spreads_replicas_and_required_holds(
    scenario: tuple[list[ClusterView], list[TaskDemand]], pack: bool
) -> None:
    """Replayed against an oracle: a replica goes, among the clusters offering its
    runtime with a free slot (all of them when none has one), to one with the fewest of
    its group (per worker over workers); required never beyond the workers of a
    cluster (over clusters: beyond one), and waits for the rule only when that is why."""
    clusters, tasks = scenario
    plan = place_on_clusters(clusters, tasks, pack=pack)
    chosen = dict(plan.assignments)
    by_id = {c.id: c for c in clusters}
    slots = {(c.id, g): grp.free_slots for c in clusters for g, grp in enumerate(c.groups)}
    counts: dict[str, Counter[str]] = {c.id: Counter() for c in clusters}
    for t in tasks:
        mine = {
            c.id: [g for g, grp in enumerate(c.groups) if grp.runtime == t.runtime]
            for c in clusters
        }
        workers = {cid: sum(by_id[cid].groups[g].workers for g in gs) for cid, gs in mine.items()}
        able = [cid for cid, gs in mine.items() if gs]
        roomy = [cid for cid in able if any(slots[cid, g] > 0 for g in mine[cid])]

        def score(cid: str, key: str, t: TaskDemand = t, workers: Any = workers) -> float:
            if t.spread_over == "worker":
                return counts[cid][key] / workers[cid]
            return float(counts[cid][key])

        def allowed(cid: str, key: str, t: TaskDemand = t, workers: Any = workers) -> bool:
            if not t.distinct:
                return True
            limit = workers[cid] if t.spread_over == "worker" else 1
            return counts[cid][key] < limit

        if t.id in chosen:
            cid = chosen[t.id]
            assert cid in able
            if t.spread is not None:
                key = t.spread
                assert allowed(cid, key)
                fair = [c for c in roomy if allowed(c, key)]
                if fair:
                    assert cid in fair
                else:
                    fair = [c for c in able if allowed(c, key)]
                assert score(cid, key) == min(score(c, key) for c in fair)
                counts[cid][key] += 1
            # the group the root books: spread the most free slots, pack the fewest above
            # zero; without room, the least queued
            gs = mine[cid]
            with_room = [g for g in gs if slots[cid, g] > 0]
            if pack and with_room:
                g = min(with_room, key=lambda g: slots[cid, g])
            else:
                g = max(with_room or gs, key=lambda g: slots[cid, g])
            slots[cid, g] -= 1
        elif plan.waiting[t.id].startswith(ANTI_AFFINITY_REASON):
            key = t.spread or ""
            assert t.distinct and able
            assert not any(allowed(c, key) for c in able)
