"""The pure application reconciler: each rule alone, then whole runs driven to a fixpoint."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeplane.errors import Invalid
from edgeplane.model import ApplicationSpec, Instance, RestartPolicy, TaskState
from edgeplane.root.reconcile import (
    ANTI_AFFINITY_REASON,
    LOSS_REASON,
    Actions,
    Create,
    Desired,
    backoff_s,
    desired_of,
    is_kept_out,
    is_live,
    is_lost,
    reconcile,
)

NEW = "rev-new"
OLD = "rev-old"
NOW = 100.0
ENDED_STATES: tuple[TaskState, ...] = ("completed", "failed", "cancelled", "skipped")
LIVE_STATES: tuple[TaskState, ...] = ("pending", "scheduled", "running")


def want(
    replicas: int = 1,
    restart: RestartPolicy = "always",
    *,
    service: str = "web",
    revision: str = NEW,
) -> Desired:
    return Desired(service=service, replicas=replicas, restart=restart, revision=revision)


def inst(
    id: str,
    index: int = 0,
    state: TaskState = "running",
    *,
    service: str = "web",
    revision: str = NEW,
    restarts: int = 0,
    reason: str | None = None,
    ended_at: float | None = None,
) -> Instance:
    if ended_at is None and state in ENDED_STATES:
        ended_at = 0.0
    return Instance(
        id=id,
        service=service,
        index=index,
        revision=revision,
        task_id=f"task-{id}",
        state=state,
        reason=reason,
        restarts=restarts,
        ended_at=ended_at,
    )


def plan(desired: Sequence[Desired], instances: Sequence[Instance], **kw: Any) -> Actions:
    return reconcile(desired, instances, kw.pop("now", NOW), **kw)


def new(index: int, *, restarts: int = 0, replaces: str | None = None) -> Create:
    return Create("web", index, NEW, restarts, replaces)


# desired_of


def spec(**service: Any) -> ApplicationSpec:
    body = {"name": "web", "runtime": "host", "command": ["sleep", "1"], **service}
    return ApplicationSpec.model_validate({"name": "app", "services": [body]})


def test_desired_of_takes_each_service_with_its_revision() -> None:
    app = spec(replicas=3, restart="on-failure")
    assert desired_of(app) == [
        Desired("web", 3, "on-failure", app.services[0].revision()),
    ]


def test_revision_ignores_replicas_and_restart_but_not_what_runs() -> None:
    base = desired_of(spec())[0].revision
    assert desired_of(spec(replicas=5, restart="never"))[0].revision == base
    assert desired_of(spec(env={"A": "1"}))[0].revision != base


def test_duplicate_services_and_negative_replicas_are_invalid() -> None:
    with pytest.raises(Invalid):
        plan([want(), want()], [])
    with pytest.raises(Invalid) as caught:
        want(-1)
    assert caught.value.field == "replicas"


# creating and keeping


def test_nothing_there_creates_every_replica() -> None:
    actions = plan([want(3)], [])
    assert actions == Actions(
        create=(new(0), new(1), new(2)), stop=(), forget=(), next_check_at=None
    )


def test_live_instances_of_any_stage_are_kept() -> None:
    current = [inst("a", 0, "pending"), inst("b", 1, "scheduled"), inst("c", 2, "running")]
    actions = plan([want(3)], current)
    assert actions.empty and actions.next_check_at is None
    assert all(is_live(i) for i in current)


def test_missing_index_is_filled_and_others_left_alone() -> None:
    actions = plan([want(3)], [inst("a", 0), inst("c", 2)])
    assert actions.create == (new(1),)
    assert actions.stop == actions.forget == ()


# losses


@pytest.mark.parametrize("policy", ["always", "on-failure", "never"])
def test_lost_instance_is_replaced_at_once_whatever_the_policy(policy: RestartPolicy) -> None:
    lost = inst("a", 0, "failed", restarts=2, reason=LOSS_REASON, ended_at=NOW)
    actions = plan([want(1, policy)], [lost])
    assert actions.create == (new(0, restarts=3, replaces="a"),)
    assert actions.forget == ("a",)
    assert actions.next_check_at is None


def test_loss_rule() -> None:
    assert LOSS_REASON == "worker_lost"  # the error the manager fails a lost task with
    assert is_lost(inst("a", state="failed", reason="worker_lost"))
    assert is_lost(inst("a", state="failed", reason="worker_lost: cluster c1 gone"))
    assert not is_lost(inst("a", state="cancelled", reason="worker_lost"))
    assert not is_lost(inst("a", state="failed", reason="exit code 1"))
    assert not is_lost(inst("a", state="failed"))
    assert not is_lost(inst("a", state="running", reason="worker_lost"))


def test_cancelled_with_loss_reason_follows_the_policy() -> None:
    actions = plan([want(1, "never")], [inst("a", 0, "cancelled", reason="worker_lost")])
    assert actions.empty


# restarts by policy, with backoff


@pytest.mark.parametrize(
    ("policy", "state", "restarted"),
    [
        ("always", "completed", True),
        ("always", "failed", True),
        ("always", "cancelled", True),
        ("always", "skipped", True),
        ("on-failure", "failed", True),
        ("on-failure", "completed", False),
        ("on-failure", "cancelled", False),
        ("never", "failed", False),
        ("never", "completed", False),
    ],
)
def test_restart_policy(policy: RestartPolicy, state: TaskState, restarted: bool) -> None:
    ended = inst("a", 0, state, restarts=1, ended_at=0.0)
    actions = plan([want(1, policy)], [ended])
    if restarted:
        assert actions.create == (new(0, restarts=2, replaces="a"),)
        assert actions.forget == ("a",)
    else:  # left ended and shown: not forgotten, nothing waits
        assert actions == Actions(create=(), stop=(), forget=(), next_check_at=None)


def test_restart_waits_for_its_backoff_then_happens() -> None:
    ended = inst("a", 0, "failed", restarts=3, ended_at=NOW)  # waits 1 * 2**3 = 8 s
    waiting = plan([want(1)], [ended], now=NOW + 7.5)
    assert waiting == Actions(create=(), stop=(), forget=(), next_check_at=NOW + 8.0)
    due = plan([want(1)], [ended], now=waiting.next_check_at)
    assert due.create == (new(0, restarts=4, replaces="a"),)
    assert due.forget == ("a",) and due.next_check_at is None


def test_backoff_parameters_and_cap() -> None:
    ended = inst("a", 0, "failed", restarts=2, ended_at=NOW)
    assert plan([want(1)], [ended], backoff_base_s=0.5).next_check_at == NOW + 2.0
    assert plan([want(1)], [ended], backoff_max_s=3.0).next_check_at == NOW + 3.0
    assert backoff_s(0, 1.0, 60.0) == 1.0
    assert backoff_s(6, 1.0, 60.0) == 60.0
    assert backoff_s(100_000, 1.0, 60.0) == 60.0  # no float overflow after a long crash loop


def test_ended_without_ended_at_restarts_without_waiting() -> None:
    ended = inst("a", 0, "completed", restarts=5).model_copy(update={"ended_at": None})
    assert plan([want(1)], [ended]).create == (new(0, restarts=6, replaces="a"),)


def test_next_check_at_is_the_earliest_wait_over_services() -> None:
    desired = [want(2), want(1, service="db")]
    instances = [
        inst("a", 0, "failed", restarts=4, ended_at=NOW),  # +16
        inst("b", 1, "failed", restarts=1, ended_at=NOW),  # +2
        inst("c", 0, "failed", service="db", restarts=2, ended_at=NOW),  # +4
    ]
    actions = plan(desired, instances)
    assert actions.empty and actions.next_check_at == NOW + 2.0


def test_latest_ended_decides_and_older_ones_are_forgotten() -> None:
    older = inst("a", 0, "failed", ended_at=10.0)
    latest = inst("b", 0, "completed", ended_at=20.0)
    actions = plan([want(1, "on-failure")], [older, latest])
    assert actions == Actions(create=(), stop=(), forget=("a",), next_check_at=None)


def test_ended_old_revision_is_redeployed_at_once_even_with_never() -> None:
    ended = inst("a", 0, "completed", revision=OLD, restarts=7, ended_at=NOW)
    actions = plan([want(1, "never")], [ended])
    assert actions.create == (new(0, replaces="a"),)
    assert actions.forget == ("a",) and actions.next_check_at is None


# superseded, excess and gone


def test_ended_instances_superseded_by_a_live_one_are_forgotten() -> None:
    instances = [
        inst("a", 0, "failed", ended_at=1.0),
        inst("b", 0, "cancelled", revision=OLD),
        inst("c", 0, "running"),
    ]
    actions = plan([want(1, "never")], instances)
    assert actions == Actions(create=(), stop=(), forget=("a", "b"), next_check_at=None)


def test_indices_past_replicas_are_stopped_or_forgotten() -> None:
    instances = [
        inst("a", 0),
        inst("b", 1),
        inst("c", 2, "pending", revision=OLD),
        inst("d", 3, "failed"),
    ]
    actions = plan([want(1)], instances)
    assert actions == Actions(create=(), stop=("b", "c"), forget=("d",), next_check_at=None)


def test_zero_replicas_stops_everything_including_old_revisions() -> None:
    instances = [inst("a", 0, revision=OLD), inst("b", 1), inst("c", 0, "completed")]
    actions = plan([want(0)], instances)
    assert actions.create == ()
    assert set(actions.stop) == {"a", "b"} and actions.forget == ("c",)


def test_services_no_longer_desired_are_removed() -> None:
    instances = [inst("a", 0), inst("b", 0, service="old"), inst("c", 1, "failed", service="old")]
    actions = plan([want(1)], instances)
    assert actions == Actions(create=(), stop=("b",), forget=("c",), next_check_at=None)


def test_stop_is_repeated_until_the_task_ends() -> None:
    instances = [inst("a", 0), inst("b", 1)]
    first = plan([want(1)], instances)
    assert first.stop == ("b",)
    assert plan([want(1)], instances) == first  # still live: asked again, applier de-dups


# duplicates


def test_duplicates_keep_a_running_one() -> None:
    instances = [inst("a", 0, "pending"), inst("b", 0, "running", restarts=9)]
    assert plan([want(1)], instances).stop == ("a",)


def test_duplicates_keep_fewest_restarts_then_lowest_id() -> None:
    instances = [inst("c", 0, restarts=1), inst("b", 0), inst("a", 0, restarts=1)]
    assert plan([want(1)], instances).stop == ("a", "c")
    instances = [inst("c", 0), inst("b", 0), inst("d", 0)]
    assert plan([want(1)], instances).stop == ("c", "d")


# rolling update


def test_rolling_update_goes_one_index_at_a_time_new_up_before_old_down() -> None:
    desired = [want(3)]
    olds = [inst(f"o{i}", i, revision=OLD) for i in range(3)]

    step = plan(desired, olds)
    assert step == Actions(create=(new(0, replaces="o0"),), stop=(), forget=(), next_check_at=None)

    starting = [*olds, inst("n0", 0, "pending")]
    assert plan(desired, starting).empty  # the new one is not running yet: wait

    up = [*olds, inst("n0", 0, "running")]
    assert plan(desired, up) == Actions(create=(), stop=("o0",), forget=(), next_check_at=None)

    stopped = [inst("o0", 0, "cancelled", revision=OLD), *olds[1:], inst("n0", 0)]
    step = plan(desired, stopped)
    assert step.create == (new(1, replaces="o1"),)
    assert step.forget == ("o0",) and step.stop == ()


def test_rolling_update_waits_while_an_old_instance_is_still_stopping() -> None:
    instances = [inst("o0", 0, revision=OLD), inst("n0", 0), inst("o1", 1, revision=OLD)]
    actions = plan([want(2)], instances)
    assert actions == Actions(create=(), stop=("o0",), forget=(), next_check_at=None)


def test_rolling_update_runs_per_service() -> None:
    desired = [want(2), want(2, service="db")]
    olds = [inst(f"{s}{i}", i, service=s, revision=OLD) for s in ("web", "db") for i in range(2)]
    actions = plan(desired, olds)
    assert actions.create == (
        Create("web", 0, NEW, 0, "web0"),
        Create("db", 0, NEW, 0, "db0"),
    )


def test_rolling_update_with_fewer_replicas_stops_the_excess_at_once() -> None:
    olds = [inst(f"o{i}", i, revision=OLD) for i in range(3)]
    actions = plan([want(1)], olds)
    assert actions == Actions(
        create=(new(0, replaces="o0"),), stop=("o1", "o2"), forget=(), next_check_at=None
    )


def test_rolling_update_with_more_replicas_fills_new_indices_at_once() -> None:
    actions = plan([want(3)], [inst("o0", 0, revision=OLD)])
    assert actions.create == (new(0, replaces="o0"), new(1), new(2))


def test_rolling_update_replaces_the_preferred_old_and_stops_old_duplicates() -> None:
    instances = [inst("o1", 0, "pending", revision=OLD), inst("o2", 0, revision=OLD)]
    actions = plan([want(1)], instances)
    assert actions.create == (new(0, replaces="o2"),)
    assert actions.stop == ("o1",)


def test_a_crashing_new_revision_restarts_with_backoff_and_holds_the_rollout() -> None:
    instances = [
        inst("o0", 0, revision=OLD),
        inst("n0", 0, "failed", restarts=2, ended_at=NOW),
        inst("o1", 1, revision=OLD),
    ]
    waiting = plan([want(2)], instances)
    assert waiting == Actions(create=(), stop=(), forget=(), next_check_at=NOW + 4.0)
    due = plan([want(2)], instances, now=NOW + 4.0)
    assert due == Actions(
        create=(new(0, restarts=3, replaces="n0"),), stop=(), forget=("n0",), next_check_at=None
    )


def test_a_new_revision_that_ends_under_never_halts_the_rollout() -> None:
    instances = [
        inst("o0", 0, revision=OLD),
        inst("n0", 0, "completed"),
        inst("o1", 1, revision=OLD),
    ]
    assert plan([want(2, "never")], instances) == Actions((), (), (), None)


def test_a_lost_new_instance_is_replaced_at_once_during_a_rollout() -> None:
    instances = [
        inst("o0", 0, revision=OLD),
        inst("n0", 0, "failed", reason=LOSS_REASON, ended_at=NOW),
        inst("o1", 1, revision=OLD),
    ]
    actions = plan([want(2, "never")], instances)
    assert actions.create == (new(0, restarts=1, replaces="n0"),)
    assert actions.stop == () and actions.forget == ("n0",)


# whole runs: apply the plan to a simulated application until nothing is left to do

MAX_STEPS = 400


@dataclass(frozen=True)
class Pace:
    """How the simulated applier and runtimes respond."""

    #: a created instance is seen ``pending`` by one plan before it runs
    slow_start: bool
    #: a stopped instance is seen still ``running`` by one plan before its task ends
    slow_stop: bool
    #: a stopped instance stays as ``cancelled`` for the reconciler to forget
    linger: bool


PACES = st.builds(Pace, st.booleans(), st.booleans(), st.booleans())


class Sim:
    """An application driven as the applier drives it: plan, apply (creates start, stops
    end the task), then let one step of time pass for what was in flight before."""

    def __init__(
        self, desired: Sequence[Desired], instances: Sequence[Instance], pace: Pace
    ) -> None:
        self.desired = list(desired)
        self.by_service = {d.service: d for d in desired}
        self.instances = {i.id: i for i in instances}
        self.pace = pace
        self.stopping: set[str] = set()
        self.now = NOW
        self.ids = (f"new{n}" for n in itertools.count())

    def live(self, service: str) -> list[Instance]:
        return [i for i in self.instances.values() if i.service == service and is_live(i)]

    def run(self, after_each: Callable[[Sim], None] | None = None) -> Actions:
        """Step until nothing is left to do or wait for; the last (empty) plan."""
        for _ in range(MAX_STEPS):
            in_flight = self.in_flight()
            actions = self.step()
            if after_each is not None:
                after_each(self)
            self.advance(in_flight)
            if actions.empty and not in_flight:
                if actions.next_check_at is None:
                    return actions
                self.now = actions.next_check_at
        raise AssertionError("did not converge")

    def in_flight(self) -> set[str]:
        starting = {id for id, i in self.instances.items() if i.state in ("pending", "scheduled")}
        return starting | self.stopping

    def step(self) -> Actions:
        actions = reconcile(self.desired, list(self.instances.values()), self.now)
        self.check(actions)
        for id in actions.forget:
            del self.instances[id]
        for id in actions.stop:
            self.stopping.add(id)
        if not self.pace.slow_stop:
            self.advance(set(actions.stop))
        for create in actions.create:
            id = next(self.ids)
            self.instances[id] = inst(
                id,
                create.index,
                "pending" if self.pace.slow_start else "running",
                service=create.service,
                revision=create.revision,
                restarts=create.restarts,
            )
        return actions

    def advance(self, ids: set[str]) -> None:
        """Instances among ``ids`` that were starting run; those asked to stop end."""
        for id in ids & set(self.instances):
            instance = self.instances[id]
            if id in self.stopping:
                self.stopping.discard(id)
                if self.pace.linger:
                    ended = {"state": "cancelled", "reason": "stopped", "ended_at": self.now}
                    self.instances[id] = instance.model_copy(update=ended)
                else:
                    del self.instances[id]
            elif instance.state in ("pending", "scheduled"):
                self.instances[id] = instance.model_copy(update={"state": "running"})

    def check(self, actions: Actions) -> None:
        """What every plan must respect, whatever the state."""
        stop, forget = set(actions.stop), set(actions.forget)
        assert len(stop) == len(actions.stop) and len(forget) == len(actions.forget)
        assert all(is_live(self.instances[id]) for id in stop)
        assert all(not is_live(self.instances[id]) for id in forget)
        assert actions.next_check_at is None or actions.next_check_at > self.now
        slots = {(c.service, c.index) for c in actions.create}
        assert len(slots) == len(actions.create)
        for create in actions.create:
            want = self.by_service[create.service]
            assert 0 <= create.index < want.replicas and create.revision == want.revision
            here = [i for i in self.live(create.service) if i.index == create.index]
            assert not any(i.revision == want.revision for i in here)
            if create.restarts:  # a restart: of an ended current instance, after its backoff
                old = self.instances[create.replaces or ""]
                assert not is_live(old) and old.revision == want.revision
                assert create.replaces in forget
                assert create.restarts == old.restarts + 1
                if not is_lost(old) and old.ended_at is not None:
                    assert self.now >= old.ended_at + backoff_s(old.restarts, 1.0, 60.0)

    def assert_converged(self) -> None:
        services = {i.service for i in self.instances.values()}
        assert services <= set(self.by_service)
        for want in self.desired:
            mine = [i for i in self.instances.values() if i.service == want.service]
            assert {i.index for i in mine} <= set(range(want.replicas))
            assert_service_settled(want, mine)


def assert_service_settled(want: Desired, mine: list[Instance]) -> None:
    """Each index holds one running current instance and nothing else, unless the policy
    left an ended current instance there (rollout halted: the old one may still serve it,
    and the indices not yet rolled keep their old instance)."""
    halted = False
    not_rolled = []
    for index in range(want.replicas):
        here = [i for i in mine if i.index == index]
        live = [i for i in here if is_live(i)]
        ended = [i for i in here if not is_live(i)]
        if any(i.revision == want.revision for i in live):
            assert [(i.state, i.revision) for i in here] == [("running", want.revision)]
        elif ended:
            assert want.restart != "always"
            assert len(ended) == 1 and ended[0].revision == want.revision
            assert not is_lost(ended[0])
            assert want.restart == "never" or ended[0].state != "failed"
            assert len(live) <= 1 and all(i.state == "running" for i in live)
            halted = halted or bool(live)
        else:
            assert [i.state for i in here] == ["running"]
            not_rolled.append(index)
    assert halted or not not_rolled


SERVICES = ("web", "db", "gone")
POLICIES: tuple[RestartPolicy, ...] = ("always", "on-failure", "never")


@st.composite
def instance_lists(draw: st.DrawFn) -> list[Instance]:
    shapes = draw(
        st.lists(
            st.tuples(
                st.sampled_from(SERVICES),
                st.integers(0, 4),
                st.sampled_from((NEW, OLD)),
                st.sampled_from(LIVE_STATES + ENDED_STATES),
                st.integers(0, 3),
                st.sampled_from((None, LOSS_REASON, "exit code 1")),
                st.sampled_from((None, 0.0, 90.0, NOW)),
            ),
            max_size=12,
        )
    )
    out = []
    for n, (service, index, revision, state, restarts, reason, ended_at) in enumerate(shapes):
        ended = state in ENDED_STATES
        shape = inst(f"i{n}", index, state, service=service, revision=revision, restarts=restarts)
        update = {"reason": reason, "ended_at": ended_at if ended else None}
        out.append(shape.model_copy(update=update))
    return out


DESIRED = st.tuples(
    st.integers(0, 4), st.sampled_from(POLICIES), st.integers(0, 4), st.sampled_from(POLICIES)
).map(
    lambda t: [
        want(t[0], t[1], service="web"),
        want(t[2], t[3], service="db", revision=OLD),
    ]
)


@settings(max_examples=300, deadline=None)
@given(DESIRED, instance_lists(), PACES)
def test_any_state_converges_to_the_desired_replicas(
    desired: list[Desired], instances: list[Instance], pace: Pace
) -> None:
    sim = Sim(desired, instances, pace)
    sim.run()
    sim.assert_converged()
    settled = reconcile(desired, list(sim.instances.values()), sim.now + 10_000.0)
    assert settled == Actions((), (), (), None)  # a fixpoint, however long one waits


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5), st.integers(0, 6), st.integers(1, 4), st.sampled_from(POLICIES), PACES)
def test_rolling_update_never_leaves_an_index_without_a_running_instance(
    before: int, after: int, other: int, policy: RestartPolicy, pace: Pace
) -> None:
    olds = [inst(f"o{i}", i, revision=OLD) for i in range(before)]
    olds += [inst(f"d{i}", i, service="db", revision=OLD) for i in range(other)]
    desired = [want(after, policy), want(other, policy, service="db")]
    kept = {"web": range(min(before, after)), "db": range(other)}
    width = {"web": after, "db": other}

    def invariants(sim: Sim) -> None:
        for service in ("web", "db"):
            live = sim.live(service)
            running = {i.index for i in live if i.state == "running"}
            assert set(kept[service]) <= running  # never a gap in service
            wanted = [i for i in live if i.index < width[service]]
            assert len(wanted) <= width[service] + 1  # one extra at most: one index at a time
            assert all(i.id in sim.stopping for i in live if i.index >= width[service])

    sim = Sim(desired, olds, pace)
    sim.run(invariants)
    sim.assert_converged()
    for service in ("web", "db"):
        live = sim.live(service)
        assert sorted(i.index for i in live) == list(range(width[service]))
        assert all(i.revision == NEW and i.restarts == 0 for i in live)


UNHEALTHY = "unhealthy: http GET / on port 8000: connection refused"


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4), st.sampled_from(POLICIES))
def test_a_new_revision_that_never_gets_healthy_never_takes_an_old_instance_down(
    replicas: int, policy: RestartPolicy
) -> None:
    """`running` means healthy (its worker reports an instance with a health check running
    only once the check passes): a new revision whose check never passes ends each of its
    instances `failed`, reason unhealthy, without ever running. The rollout holds at its
    first index with every old instance running, and the new one is restarted by the
    policy (each restart after its backoff: ``next_check_at``)."""
    instances = {f"o{i}": inst(f"o{i}", i, revision=OLD) for i in range(replicas)}
    now, made = NOW, itertools.count()
    restarts: list[int] = []
    for _ in range(40):
        actions = reconcile([want(replicas, policy)], list(instances.values()), now)
        assert actions.stop == ()  # nothing old is ever stopped
        for id in actions.forget:
            del instances[id]
        for create in actions.create:
            assert create.index == 0  # never past the first index
            id = f"n{next(made)}"
            restarts.append(create.restarts)
            instances[id] = inst(id, 0, "scheduled", restarts=create.restarts)
        for id, instance in list(instances.items()):  # its worker: never healthy
            if instance.revision == NEW and instance.state == "scheduled":
                ended = {"state": "failed", "reason": UNHEALTHY, "ended_at": now}
                instances[id] = instance.model_copy(update=ended)
        olds = sorted((i for i in instances.values() if i.revision == OLD), key=lambda i: i.index)
        assert [(i.index, i.state) for i in olds] == [(n, "running") for n in range(replicas)]
        if actions.next_check_at is not None:
            now = actions.next_check_at
        elif actions.empty:
            break
    assert restarts == [0] if policy == "never" else restarts[:4] == [0, 1, 2, 3]


# required anti-affinity: a rollout makes room when the new replica has nowhere to go

KEPT_OUT = f"{ANTI_AFFINITY_REASON} (spread over workers): every eligible worker with room ..."


def test_a_replica_kept_out_by_anti_affinity_makes_room_at_its_index() -> None:
    olds = [inst("o0", 0, revision=OLD), inst("o1", 1, revision=OLD)]
    kept_out = inst("n0", 0, "pending", reason=KEPT_OUT)
    actions = plan([want(2)], [*olds, kept_out])
    assert actions == Actions(create=(), stop=("o0",), forget=(), next_check_at=None)
    # waiting for anything else (room), the old one keeps serving until the new one runs
    busy = kept_out.model_copy(update={"reason": "all eligible workers are busy"})
    assert plan([want(2)], [*olds, busy]).empty
    assert not is_kept_out(kept_out.model_copy(update={"state": "scheduled"}))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4), st.integers(0, 2), st.booleans())
def test_property_required_anti_affinity_rolls_without_a_spare_worker(
    workers: int, spare: int, slow_stop: bool
) -> None:
    """W workers, at most one replica each: a rollout of R <= W replicas converges (with
    R == W it used to wait forever), never runs more than W, and keeps all but one
    index serving at any time."""
    replicas = workers - min(spare, workers - 1)
    instances = {f"o{i}": inst(f"o{i}", i, revision=OLD) for i in range(replicas)}
    stopping: set[str] = set()
    ids = itertools.count()
    for _ in range(MAX_STEPS):
        for id in sorted(stopping):  # what was asked to stop last round ends now
            instances[id] = instances[id].model_copy(update={"state": "cancelled", "ended_at": NOW})
        stopping.clear()
        # the scheduler: a pending replica takes a worker none runs, else waits for the rule
        occupied = sum(i.state == "running" for i in instances.values())
        for id, i in sorted(instances.items()):
            if i.state == "pending":
                if occupied < workers:
                    instances[id] = i.model_copy(update={"state": "running", "reason": None})
                    occupied += 1
                else:
                    instances[id] = i.model_copy(update={"reason": KEPT_OUT})
        assert occupied <= workers
        serving = {i.index for i in instances.values() if i.state == "running"}
        assert len(serving) >= replicas - 1
        actions = reconcile([want(replicas)], list(instances.values()), NOW)
        for id in actions.forget:
            del instances[id]
        for id in actions.stop:
            if slow_stop:
                stopping.add(id)
            else:
                instances[id] = instances[id].model_copy(
                    update={"state": "cancelled", "ended_at": NOW}
                )
        for create in actions.create:
            id = f"n{next(ids)}"
            instances[id] = inst(id, create.index, "pending", revision=create.revision)
        settled = all(i.state == "running" for i in instances.values())
        if actions.empty and settled and not stopping:
            break
    else:
        raise AssertionError("did not converge")
    assert sorted(i.index for i in instances.values()) == list(range(replicas))
    assert all(i.revision == NEW for i in instances.values())
