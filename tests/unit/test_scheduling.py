"""The pure schedulers: examples for every rule and waiting reason, then properties."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeplane.errors import Invalid
from edgeplane.scheduling import STRATEGIES, TEE_RULES, Plan, TaskDemand, WorkerView, make_plan


def worker(
    id: str,
    order: int,
    *,
    runtimes: Sequence[str] = ("wasm",),
    labels: Mapping[str, str] | None = None,
    tee: Sequence[str] = (),
    slots: int = 4,
    cpu: float = 4.0,
    memory: int = 4096,
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
        order=order,
        bridge=bridge,
    )


def task(id: str, runtime: str = "wasm", **kw: Any) -> TaskDemand:
    return TaskDemand(id, runtime, **kw)


def placed(plan: Plan) -> dict[str, str]:
    return dict(plan.assignments)


def only_reason(plan: Plan) -> str:
    assert not plan.assignments
    reasons = set(plan.waiting.values())
    assert len(reasons) == 1
    return reasons.pop()


# --- choosing a strategy -------------------------------------------------------------


def test_strategies_are_named() -> None:
    assert STRATEGIES == ("round-robin", "priority", "resource-fit")


def test_unknown_strategy_is_invalid_on_the_scheduler_field() -> None:
    with pytest.raises(Invalid) as caught:
        make_plan("random", [worker("w0", 0)], [task("t")])
    assert caught.value.field == "scheduler"
    assert "round-robin" in caught.value.detail


def test_duplicate_task_ids_are_invalid() -> None:
    with pytest.raises(Invalid) as caught:
        make_plan("priority", [worker("w0", 0)], [task("t"), task("t")])
    assert caught.value.field == "tasks"


def test_snapshot_values_are_validated_and_copied() -> None:
    labels = {"site": "a"}
    view = worker("w0", 0, labels=labels)
    labels["site"] = "b"
    assert view.labels == {"site": "a"}
    assert hash(view) == hash(worker("w0", 0, labels={"site": "a"}))
    with pytest.raises(Invalid) as caught:
        task("t", tee="maybe")
    assert caught.value.field == "tee"
    with pytest.raises(Invalid):
        task("t", cpu=-1.0)
    with pytest.raises(Invalid):
        task("t", memory_mb=-1)
    assert TEE_RULES == ("any", "required", "none")


def test_no_tasks_gives_an_empty_plan_and_keeps_the_cursor() -> None:
    plan = make_plan("round-robin", [worker("w0", 0)], [], cursor=7)
    assert plan == Plan(assignments=(), waiting={}, cursor=7)


# --- round-robin ---------------------------------------------------------------------


def test_round_robin_walks_the_ring_and_advances_the_cursor() -> None:
    ring = [worker("a", 0), worker("b", 1), worker("c", 2)]
    tasks = [task(f"t{i}", seq=i) for i in range(5)]
    plan = make_plan("round-robin", ring, tasks)
    assert [w for _, w in plan.assignments] == ["a", "b", "c", "a", "b"]
    assert plan.cursor == 2
    again = make_plan("round-robin", ring, [task("next")], cursor=plan.cursor)
    assert placed(again) == {"next": "c"}
    assert again.cursor == 3
    wrapped = make_plan("round-robin", ring, [task("wrap")], cursor=again.cursor)
    assert placed(wrapped) == {"wrap": "a"}


def test_round_robin_ring_follows_order_not_input_position() -> None:
    ring = [worker("late", 20), worker("early", 5), worker("mid", 10)]
    plan = make_plan("round-robin", ring, [task(f"t{i}", seq=i) for i in range(3)], cursor=6)
    assert [w for _, w in plan.assignments] == ["mid", "late", "early"]
    assert plan.cursor == 6


def test_round_robin_is_fifo_by_seq() -> None:
    tasks = [task("third", seq=3.0), task("first", seq=1.0), task("second", seq=2.0)]
    plan = make_plan("round-robin", [worker("a", 0)], tasks)
    assert [t for t, _ in plan.assignments] == ["first", "second", "third"]


def test_round_robin_ignores_priority() -> None:
    tasks = [task("old", seq=1.0, priority=0), task("urgent", seq=2.0, priority=100)]
    plan = make_plan("round-robin", [worker("a", 0, slots=1)], tasks)
    assert placed(plan) == {"old": "a"}
    assert plan.waiting == {"urgent": "all eligible workers are busy"}


def test_round_robin_skips_ineligible_and_full_workers() -> None:
    ring = [
        worker("full", 0, slots=0),
        worker("host-only", 1, runtimes=("host",)),
        worker("ok", 2, slots=1),
        worker("also-ok", 3, slots=1),
    ]
    plan = make_plan("round-robin", ring, [task(f"t{i}", seq=i) for i in range(3)])
    assert placed(plan) == {"t0": "ok", "t1": "also-ok"}
    assert plan.waiting == {"t2": "all eligible workers are busy"}


def test_round_robin_and_priority_ignore_cpu_and_memory() -> None:
    small = worker("small", 0, cpu=0.0, memory=0)
    for strategy in ("round-robin", "priority"):
        plan = make_plan(strategy, [small], [task("t", cpu=8.0, memory_mb=8192)])
        assert placed(plan) == {"t": "small"}


# --- priority ------------------------------------------------------------------------


def test_priority_places_higher_first_then_fifo() -> None:
    tasks = [
        task("low", priority=10, seq=0.0),
        task("high-late", priority=90, seq=2.0),
        task("high-early", priority=90, seq=1.0),
        task("default", seq=0.5),
    ]
    plan = make_plan("priority", [worker("a", 0, slots=2), worker("b", 1, slots=1)], tasks)
    assert plan.assignments == (("high-early", "a"), ("high-late", "b"), ("default", "a"))
    assert plan.waiting == {"low": "all eligible workers are busy"}
    assert plan.cursor == 1


def test_priority_lets_a_lower_task_use_a_worker_the_higher_one_cannot() -> None:
    ring = [worker("wasm", 0, slots=1), worker("host", 1, runtimes=("host",), slots=1)]
    tasks = [task("hi", "host", priority=90), task("hi2", "host", priority=80), task("lo")]
    plan = make_plan("priority", ring, tasks)
    assert placed(plan) == {"hi": "host", "lo": "wasm"}
    assert plan.waiting == {"hi2": "all eligible workers are busy"}


# --- resource-fit --------------------------------------------------------------------


def test_resource_fit_spreads_to_most_free_memory_then_cpu_then_order() -> None:
    ring = [
        worker("a", 0, memory=1024, cpu=1.0),
        worker("b", 1, memory=2048, cpu=1.0),
        worker("c", 2, memory=2048, cpu=2.0),
        worker("d", 3, memory=2048, cpu=2.0),
    ]
    plan = make_plan("resource-fit", ring, [task("t", memory_mb=100)])
    assert placed(plan) == {"t": "c"}


def test_resource_fit_spread_breaks_full_ties_by_free_slots() -> None:
    ring = [worker("a", 0), worker("b", 1)]
    plan = make_plan("resource-fit", ring, [task(f"t{i}", seq=i) for i in range(4)])
    assert [w for _, w in plan.assignments] == ["a", "b", "a", "b"]


def test_resource_fit_spread_consumes_what_it_assigns() -> None:
    ring = [worker("a", 0, memory=1000), worker("b", 1, memory=800)]
    tasks = [task(f"t{i}", seq=i, memory_mb=300) for i in range(4)]
    plan = make_plan("resource-fit", ring, tasks)
    # a 1000 -> 700, b 800 -> 500, a 700 -> 400, b 500 -> 200
    assert [w for _, w in plan.assignments] == ["a", "b", "a", "b"]


def test_resource_fit_pack_fills_the_tightest_worker_that_fits() -> None:
    ring = [
        worker("roomy", 0, memory=4096),
        worker("tight", 1, memory=300),
        worker("tiny", 2, memory=100),
    ]
    tasks = [task(f"t{i}", seq=i, memory_mb=150) for i in range(3)]
    plan = make_plan("resource-fit", ring, tasks, pack=True)
    assert [w for _, w in plan.assignments] == ["tight", "tight", "roomy"]


def test_resource_fit_orders_by_priority() -> None:
    ring = [worker("a", 0, memory=512)]
    tasks = [task("lo", priority=1, memory_mb=512), task("hi", priority=99, memory_mb=512)]
    plan = make_plan("resource-fit", ring, tasks)
    assert placed(plan) == {"hi": "a"}
    assert plan.waiting == {"lo": "no eligible worker has 512 MB memory free"}


def test_resource_fit_never_overcommits_cpu_and_tolerates_float_drift() -> None:
    ring = [worker("a", 0, cpu=0.3, slots=10)]
    tasks = [task(f"t{i}", seq=i, cpu=0.1) for i in range(4)]
    plan = make_plan("resource-fit", ring, tasks)
    assert placed(plan) == {"t0": "a", "t1": "a", "t2": "a"}
    assert plan.waiting == {"t3": "no eligible worker has 0.1 CPU free"}


def test_a_task_without_requests_fits_an_overcommitted_worker() -> None:
    ring = [worker("a", 0, cpu=-1.0, memory=-10)]
    plan = make_plan("resource-fit", ring, [task("t")])
    assert placed(plan) == {"t": "a"}


def test_resource_fit_keeps_the_cursor() -> None:
    plan = make_plan("resource-fit", [worker("a", 0)], [task("t")], cursor=5)
    assert plan.cursor == 5


# --- eligibility rules ---------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_labels_must_all_match(strategy: str) -> None:
    ring = [
        worker("a", 0, labels={"site": "a"}),
        worker("ab", 1, labels={"site": "a", "zone": "b"}),
    ]
    plan = make_plan(strategy, ring, [task("t", labels={"site": "a", "zone": "b"})])
    assert placed(plan) == {"t": "ab"}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_tee_rules(strategy: str) -> None:
    ring = [worker("plain", 0), worker("sgx", 1, tee=("sgx",))]
    tasks = [task("req", tee="required", seq=0), task("none", tee="none", seq=1)]
    plan = make_plan(strategy, ring, tasks)
    assert placed(plan) == {"req": "sgx", "none": "plain"}
    anywhere = make_plan(strategy, [ring[1]], [task("any")])
    assert placed(anywhere) == {"any": "sgx"}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_bridge_task_goes_only_to_a_worker_with_a_bridge(strategy: str) -> None:
    """``network: bridge``: a worker without a bridge would fail it ``no_network``."""
    ring = [
        worker("plain", 0, runtimes=("container",), memory=8192),
        worker("bridged", 1, runtimes=("container",), bridge=True),
    ]
    tasks = [task(f"b{i}", "container", bridge=True, seq=i) for i in range(3)]
    tasks.append(task("n", "container", seq=9))
    plan = make_plan(strategy, ring, tasks)
    assert {placed(plan)[f"b{i}"] for i in range(3)} == {"bridged"}
    assert placed(plan)["n"] in {"plain", "bridged"}
    # with the bridged worker full, bridge tasks wait; the others still run
    full = [ring[0], worker("bridged", 1, runtimes=("container",), slots=0, bridge=True)]
    plan = make_plan(strategy, full, tasks)
    assert placed(plan) == {"n": "plain"}
    assert set(plan.waiting) == {"b0", "b1", "b2"}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_pinned_worker_is_honoured(strategy: str) -> None:
    ring = [worker("a", 0, memory=8192), worker("b", 1), worker("c", 2)]
    plan = make_plan(strategy, ring, [task("t", worker_id="c", seq=0), task("u", seq=1)])
    assert placed(plan)["t"] == "c"


# --- waiting reasons -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("ring", "demand", "reason"),
    [
        ([], task("t"), "no worker online"),
        ([worker("a", 0)], task("t", "container"), "no worker offers runtime 'container'"),
        (
            [worker("a", 0, labels={"site": "b"})],
            task("t", labels={"site": "a"}),
            "no worker has labels site=a",
        ),
        (
            [worker("a", 0), worker("h", 1, runtimes=("host",), labels={"site": "a"})],
            task("t", labels={"site": "a"}),
            "no worker offering runtime 'wasm' has labels site=a",
        ),
        ([worker("a", 0)], task("t", tee="required"), "no worker has a TEE"),
        (
            [worker("a", 0), worker("h", 1, runtimes=("host",), tee=("sev",))],
            task("t", tee="required"),
            "no worker offering runtime 'wasm' has a TEE",
        ),
        (
            [worker("a", 0, labels={"site": "a"}), worker("b", 1, tee=("sev",))],
            task("t", tee="required", labels={"site": "a"}),
            "no worker offering runtime 'wasm' with labels site=a has a TEE",
        ),
        ([worker("a", 0, tee=("sgx",))], task("t", tee="none"), "every worker has a TEE"),
        (
            [worker("a", 0, tee=("sgx",)), worker("h", 1, runtimes=("host",))],
            task("t", tee="none"),
            "every worker offering runtime 'wasm' has a TEE",
        ),
        (
            [worker("a", 0, runtimes=("container",))],
            task("t", "container", bridge=True),
            "no worker has a bridge network (the task has network: bridge)",
        ),
        (
            [worker("a", 0, runtimes=("container",)), worker("h", 1, bridge=True)],
            task("t", "container", bridge=True),
            "no worker offering runtime 'container' has a bridge network"
            " (the task has network: bridge)",
        ),
        (
            [
                worker("a", 0, runtimes=("container",), labels={"site": "a"}),
                worker("b", 1, runtimes=("container",), bridge=True),
            ],
            task("t", "container", bridge=True, labels={"site": "a"}),
            "no worker offering runtime 'container' with labels site=a has a bridge network"
            " (the task has network: bridge)",
        ),
        (
            [worker("a", 0, tee=("sgx",)), worker("b", 1, bridge=True)],
            task("t", tee="required", bridge=True),
            "no worker offering runtime 'wasm' with a TEE has a bridge network"
            " (the task has network: bridge)",
        ),
        (
            [worker("a", 0, bridge=True, labels={"site": "b"})],
            task("t", bridge=True, labels={"site": "a"}),
            "no worker has labels site=a",
        ),
        (
            [worker("w1", 0, tee=("sgx",))],
            task("t", worker_id="w1", tee="required", bridge=True),
            "pinned worker w1 has no bridge network (the task has network: bridge)",
        ),
        ([worker("a", 0)], task("t", worker_id="w1"), "pinned worker w1 is not available"),
        ([], task("t", worker_id="w1"), "pinned worker w1 is not available"),
        (
            [worker("w1", 0)],
            task("t", "host", worker_id="w1"),
            "pinned worker w1 does not offer runtime 'host'",
        ),
        (
            [worker("w1", 0)],
            task("t", worker_id="w1", labels={"site": "a", "zone": "x"}),
            "pinned worker w1 does not have labels site=a, zone=x",
        ),
        (
            [worker("w1", 0)],
            task("t", worker_id="w1", tee="required"),
            "pinned worker w1 has no TEE",
        ),
        (
            [worker("w1", 0, tee=("tdx",))],
            task("t", worker_id="w1", tee="none"),
            "pinned worker w1 has a TEE",
        ),
        ([worker("w1", 0, slots=0)], task("t", worker_id="w1"), "pinned worker w1 is busy"),
        (
            [worker("w1", 0, memory=100)],
            task("t", worker_id="w1", memory_mb=512),
            "pinned worker w1 does not have 512 MB memory free",
        ),
        ([worker("a", 0, slots=0)], task("t"), "all eligible workers are busy"),
        (
            [worker("a", 0, memory=100), worker("b", 1, memory=511)],
            task("t", memory_mb=512),
            "no eligible worker has 512 MB memory free",
        ),
        ([worker("a", 0, cpu=1.0)], task("t", cpu=1.5), "no eligible worker has 1.5 CPU free"),
        (
            [worker("a", 0, cpu=1.0, memory=100)],
            task("t", cpu=2.0, memory_mb=512),
            "no eligible worker has 2 CPU and 512 MB memory free",
        ),
        (
            [worker("a", 0, cpu=4.0, memory=100), worker("b", 1, cpu=1.0, memory=1024)],
            task("t", cpu=2.0, memory_mb=512),
            "no eligible worker has both 2 CPU and 512 MB memory free",
        ),
        (
            [worker("a", 0, slots=0, memory=1024), worker("b", 1, memory=100)],
            task("t", memory_mb=512),
            "all eligible workers are busy",
        ),
    ],
)
def test_waiting_reason_is_the_most_specific(
    ring: list[WorkerView], demand: TaskDemand, reason: str
) -> None:
    assert only_reason(make_plan("resource-fit", ring, [demand])) == reason


def test_waiting_reason_applies_to_every_task_left_over() -> None:
    ring = [worker("a", 0, slots=1)]
    tasks = [task(f"t{i}", seq=i) for i in range(5)] + [task("h", "host")]
    plan = make_plan("priority", ring, tasks)
    assert placed(plan) == {"t0": "a"}
    assert plan.waiting == {
        **{f"t{i}": "all eligible workers are busy" for i in range(1, 5)},
        "h": "no worker offers runtime 'host'",
    }


# --- properties ----------------------------------------------------------------------

RUNTIMES = ("wasm", "host", "container")
LABEL_KEYS = ("site", "zone")
LABEL_VALUES = ("a", "b")
FIT_SLACK = 1e-9  # what the scheduler forgives float drift in a cpu fit
SUM_SLACK = 1e-6  # what a sum of cpu requests may exceed the free cpu by

Scenario = tuple[str, list[WorkerView], list[TaskDemand], int, bool]


# Strategies are built once at import: hypothesis re-validates ones built inside a draw.


def _view(
    order: int,
    runtimes: frozenset[str],
    labels: dict[str, str],
    tee: frozenset[str],
    slots: int,
    cpu: float,
    memory: int,
    bridge: bool,
) -> WorkerView:
    return WorkerView(f"w{order}", runtimes, labels, tee, slots, cpu, memory, order, bridge=bridge)


WORKER = st.builds(
    _view,
    order=st.integers(0, 40),
    runtimes=st.frozensets(st.sampled_from(RUNTIMES), min_size=1),
    labels=st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES)),
    tee=st.frozensets(st.sampled_from(("sgx", "sev")), max_size=1),
    slots=st.integers(0, 3),
    cpu=st.sampled_from((0.0, 0.1, 0.3, 0.5, 1.0, 2.0)),
    memory=st.sampled_from((0, 128, 256, 512, 1024)),
    bridge=st.booleans(),
)
WORKERS = st.lists(WORKER, max_size=6, unique_by=lambda w: w.order)
TASK = st.builds(
    TaskDemand,
    id=st.just(""),
    runtime=st.sampled_from(RUNTIMES),
    priority=st.sampled_from((0, 10, 50, 50, 90, 100)),
    seq=st.integers(0, 6).map(float),
    labels=st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=1),
    tee=st.sampled_from(TEE_RULES),
    cpu=st.sampled_from((0.0, 0.1, 0.2, 0.5, 1.0)),
    memory_mb=st.sampled_from((0, 64, 128, 512)),
    bridge=st.booleans(),
)
TASKS = st.lists(TASK, max_size=12)
PIN = st.integers(0, 9)  # 0-5: not pinned, 6: pinned to a worker that is gone, 7-9: to one online


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    workers = draw(WORKERS)
    ids = [w.id for w in workers]
    tasks = []
    for j, shape in enumerate(draw(TASKS)):
        pin = draw(PIN)
        worker_id = None if pin < 6 else "gone" if pin == 6 or not ids else ids[pin % len(ids)]
        tasks.append(replace(shape, id=f"t{j}", worker_id=worker_id))
    strategy = draw(st.sampled_from(STRATEGIES))
    return strategy, workers, tasks, draw(st.integers(0, 45)), draw(st.booleans())


def eligible(w: WorkerView, t: TaskDemand) -> bool:
    """An oracle written apart from the scheduler's own filters."""
    if t.worker_id is not None and t.worker_id != w.id:
        return False
    if t.runtime not in w.runtimes:
        return False
    if any(w.labels.get(k) != v for k, v in t.labels.items()):
        return False
    if t.bridge and not w.bridge:
        return False
    return not ((t.tee == "required" and not w.tee) or (t.tee == "none" and w.tee))


class Ledger:
    """Free capacity per worker, replayed from a plan's assignments in dispatch order."""

    def __init__(self, workers: Sequence[WorkerView], resources: bool) -> None:
        self.resources = resources
        self.free = {w.id: [w.free_slots, w.free_cpu, w.free_memory_mb] for w in workers}

    def fits(self, worker_id: str, t: TaskDemand) -> bool:
        slots, cpu, memory = self.free[worker_id]
        if slots <= 0:
            return False
        if not self.resources:
            return True
        return (t.cpu == 0 or cpu + FIT_SLACK >= t.cpu) and (
            t.memory_mb == 0 or memory >= t.memory_mb
        )

    def take(self, worker_id: str, t: TaskDemand) -> None:
        entry = self.free[worker_id]
        entry[0] -= 1
        if self.resources:
            entry[1] -= t.cpu
            entry[2] -= t.memory_mb


def sort_key(strategy: str) -> Callable[[TaskDemand], tuple[float, ...]]:
    if strategy == "round-robin":
        return lambda t: (t.seq,)
    return lambda t: (-t.priority, t.seq)


def check_partition(tasks: Sequence[TaskDemand], plan: Plan) -> None:
    """Every task is either assigned exactly once or waiting with a reason."""
    assigned = [t for t, _ in plan.assignments]
    assert len(assigned) == len(set(assigned))
    assert set(assigned).isdisjoint(plan.waiting)
    assert set(assigned) | set(plan.waiting) == {t.id for t in tasks}
    assert all(isinstance(r, str) and r for r in plan.waiting.values())


def check_eligible_and_not_overcommitted(
    strategy: str, workers: Sequence[WorkerView], tasks: Sequence[TaskDemand], plan: Plan
) -> None:
    by_worker = {w.id: w for w in workers}
    by_task = {t.id: t for t in tasks}
    slots: dict[str, int] = defaultdict(int)
    cpu: dict[str, float] = defaultdict(float)
    memory: dict[str, int] = defaultdict(int)
    for task_id, worker_id in plan.assignments:
        t, w = by_task[task_id], by_worker[worker_id]
        assert eligible(w, t)
        slots[worker_id] += 1
        cpu[worker_id] += t.cpu
        memory[worker_id] += t.memory_mb
    for w in workers:
        assert slots[w.id] <= w.free_slots
        if strategy == "resource-fit":
            assert cpu[w.id] <= w.free_cpu + SUM_SLACK
            assert memory[w.id] <= w.free_memory_mb


def check_order_respected(
    strategy: str, workers: Sequence[WorkerView], tasks: Sequence[TaskDemand], plan: Plan
) -> None:
    """A later task (lower priority, or later FIFO for round-robin) never takes room on a
    worker that an earlier task left waiting could have used; and once the plan is done,
    no waiting task fits anywhere it is eligible."""
    key = sort_key(strategy)
    by_task = {t.id: t for t in tasks}
    by_worker = {w.id: w for w in workers}
    waiting = [by_task[t] for t in plan.waiting]
    ledger = Ledger(workers, resources=strategy == "resource-fit")
    for task_id, worker_id in plan.assignments:
        later = by_task[task_id]
        for earlier in waiting:
            if key(earlier) < key(later) and eligible(by_worker[worker_id], earlier):
                assert not ledger.fits(worker_id, earlier)
        ledger.take(worker_id, later)
    for t in waiting:
        assert not any(eligible(w, t) and ledger.fits(w.id, t) for w in workers)


@settings(max_examples=250, deadline=None)
@given(scenarios(), st.randoms(use_true_random=False))
def test_property_plans_keep_every_invariant(scenario: Scenario, rnd: random.Random) -> None:
    strategy, workers, tasks, cursor, pack = scenario
    plan = make_plan(strategy, workers, tasks, cursor=cursor, pack=pack)
    check_partition(tasks, plan)
    check_eligible_and_not_overcommitted(strategy, workers, tasks, plan)
    check_order_respected(strategy, workers, tasks, plan)
    # Deterministic, and independent of the order the workers are listed in.
    assert make_plan(strategy, workers, tasks, cursor=cursor, pack=pack) == plan
    shuffled = list(workers)
    rnd.shuffle(shuffled)
    assert make_plan(strategy, shuffled, tasks, cursor=cursor, pack=pack) == plan


@settings(max_examples=200, deadline=None)
@given(
    workers=st.integers(1, 8),
    tasks=st.integers(0, 40),
    cursor=st.integers(0, 10),
    strategy=st.sampled_from(("round-robin", "priority")),
    priorities=st.lists(st.integers(0, 100), min_size=40, max_size=40),
)
def test_property_round_robin_spreads_evenly_over_equal_workers(
    workers: int, tasks: int, cursor: int, strategy: str, priorities: list[int]
) -> None:
    ring = [worker(f"w{i}", i, slots=100) for i in range(workers)]
    demands = [task(f"t{j}", seq=j, priority=priorities[j]) for j in range(tasks)]
    plan = make_plan(strategy, ring, demands, cursor=cursor)
    counts = Counter(w for _, w in plan.assignments)
    assert len(plan.assignments) == tasks
    assert max(counts.values(), default=0) - min(counts.values(), default=0) <= 1
    if tasks >= workers:
        assert len(counts) == workers


@settings(max_examples=200, deadline=None)
@given(
    workers=WORKERS,
    sizes=st.lists(st.integers(0, 6), min_size=1, max_size=4),
    cursor=st.integers(0, 45),
    runtimes=st.lists(st.sampled_from(RUNTIMES), min_size=24, max_size=24),
)
def test_property_round_robin_cursor_carries_over_between_calls(
    workers: list[WorkerView], sizes: list[int], cursor: int, runtimes: list[str]
) -> None:
    """Scheduling a queue in several calls equals scheduling it in one (ample slots)."""
    roomy = [
        WorkerView(w.id, w.runtimes, w.labels, w.tee, 1000, w.free_cpu, w.free_memory_mb, w.order)
        for w in workers
    ]
    demands = [task(f"t{j}", runtimes[j], seq=j) for j in range(sum(sizes))]
    whole = make_plan("round-robin", roomy, demands, cursor=cursor)
    assignments: list[tuple[str, str]] = []
    at = 0
    for size in sizes:
        part = make_plan("round-robin", roomy, demands[at : at + size], cursor=cursor)
        assignments += part.assignments
        cursor = part.cursor
        at += size
    assert tuple(assignments) == whole.assignments
    assert cursor == whole.cursor


# ------------------------------------------------------- artifact preference (soft)

DIGESTS = ("a" * 64, "b" * 64, "c" * 64)
HELD = st.frozensets(st.sampled_from(DIGESTS), max_size=2)
WANTED = st.sampled_from((None, *DIGESTS))


def test_round_robin_prefers_the_worker_holding_the_module() -> None:
    workers = [worker("w1", 0, slots=2), worker("w2", 1, slots=2)]
    workers[1] = replace(workers[1], artifacts=frozenset({DIGESTS[0]}))
    tasks = [task(f"t{i}", seq=i, artifact=DIGESTS[0]) for i in range(3)]
    plan = make_plan("round-robin", workers, tasks)
    # to the holder while it has room, then to the other one: never a wait
    assert placed(plan) == {"t0": "w2", "t1": "w2", "t2": "w1"}


def test_resource_fit_prefers_a_holder_that_fits_only() -> None:
    small = replace(worker("w1", 0, memory=256), artifacts=frozenset({DIGESTS[0]}))
    big = worker("w2", 1, memory=4096)
    fits = make_plan("resource-fit", [small, big], [task("t", artifact=DIGESTS[0], memory_mb=128)])
    assert placed(fits) == {"t": "w1"}
    too_big = make_plan(
        "resource-fit", [small, big], [task("t", artifact=DIGESTS[0], memory_mb=512)]
    )
    assert placed(too_big) == {"t": "w2"}


def test_a_holder_that_does_not_match_the_labels_is_not_preferred() -> None:
    holder = replace(worker("w1", 0, labels={"zone": "a"}), artifacts=frozenset({DIGESTS[0]}))
    other = worker("w2", 1, labels={"zone": "b"})
    plan = make_plan(
        "priority", [holder, other], [task("t", artifact=DIGESTS[0], labels={"zone": "b"})]
    )
    assert placed(plan) == {"t": "w2"}


@st.composite
def artifact_scenarios(draw: st.DrawFn) -> Scenario:
    strategy, workers, tasks, cursor, pack = draw(scenarios())
    workers = [replace(w, artifacts=draw(HELD)) for w in workers]
    tasks = [replace(t, artifact=draw(WANTED)) for t in tasks]
    return strategy, workers, tasks, cursor, pack


def without_artifacts(tasks: Sequence[TaskDemand]) -> list[TaskDemand]:
    return [replace(t, artifact=None) for t in tasks]


@settings(max_examples=250, deadline=None)
@given(artifact_scenarios())
def test_property_artifact_preference_keeps_every_invariant(scenario: Scenario) -> None:
    strategy, workers, tasks, cursor, pack = scenario
    plan = make_plan(strategy, workers, tasks, cursor=cursor, pack=pack)
    check_partition(tasks, plan)
    check_eligible_and_not_overcommitted(strategy, workers, tasks, plan)
    check_order_respected(strategy, workers, tasks, plan)


@settings(max_examples=300, deadline=None)
@given(artifact_scenarios(), st.integers(0, 11))
def test_property_artifact_is_only_a_tie_breaker(scenario: Scenario, pick: int) -> None:
    """One task: it waits exactly when it would without the preference; it goes to a
    holder when an eligible holder has room, else where it would have gone anyway."""
    strategy, workers, tasks, cursor, pack = scenario
    if not tasks:
        return
    one = tasks[pick % len(tasks)]
    plan = make_plan(strategy, workers, [one], cursor=cursor, pack=pack)
    plain = make_plan(strategy, workers, without_artifacts([one]), cursor=cursor, pack=pack)
    assert set(plan.waiting) == set(plain.waiting)
    assert plan.waiting == plain.waiting
    if not plan.assignments:
        return
    ((_, chosen),) = plan.assignments
    ledger = Ledger(workers, resources=strategy == "resource-fit")
    holders = [
        w.id
        for w in workers
        if one.artifact in w.artifacts and eligible(w, one) and ledger.fits(w.id, one)
    ]
    if one.artifact is not None and holders:
        assert chosen in holders
    else:
        assert plan == plain


@settings(max_examples=150, deadline=None)
@given(artifact_scenarios())
def test_property_nobody_holding_it_changes_nothing(scenario: Scenario) -> None:
    strategy, workers, tasks, cursor, pack = scenario
    bare = [replace(w, artifacts=frozenset()) for w in workers]
    with_pref = make_plan(strategy, bare, tasks, cursor=cursor, pack=pack)
    assert with_pref == make_plan(
        strategy, bare, without_artifacts(tasks), cursor=cursor, pack=pack
    )


@settings(max_examples=200, deadline=None)
@given(WORKERS, TASK, st.sampled_from(STRATEGIES))
def test_property_a_bridge_task_names_the_bridge_exactly_when_only_the_bridge_is_missing(
    workers: list[WorkerView], shape: TaskDemand, strategy: str
) -> None:
    """A task with ``network: bridge`` no worker can run waits (never fails), and its
    reason names the bridge exactly when a worker would take it but for the bridge."""
    t = replace(shape, id="t", bridge=True)
    plan = make_plan(strategy, workers, [t])
    if any(eligible(w, t) for w in workers):
        return
    assert plan.assignments == () and set(plan.waiting) == {"t"}
    but_for_the_bridge = any(eligible(w, replace(t, bridge=False)) for w in workers)
    assert ("bridge network" in plan.waiting["t"]) == but_for_the_bridge, plan.waiting
