"""The pure job/workflow engine: graph validation and step-by-step evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeplane.errors import Invalid
from edgeplane.model import TERMINAL_STATES, TaskSpec
from edgeplane.workflows import Decision, Node, build_graph, evaluate, resolve_inputs


def task(name: str, *deps: str, run_if: str = "success", **fields: Any) -> TaskSpec:
    return TaskSpec.model_validate(
        {"name": name, "depends_on": list(deps), "run_if": run_if, **fields}
    )


def ids_for(specs: Sequence[TaskSpec]) -> list[str]:
    return [f"id-{i}" for i in range(len(specs))]


def graph(*specs: TaskSpec, mode: str = "dag") -> tuple[Node, ...]:
    return build_graph(specs, ids_for(specs), mode=mode)


def invalid(specs: Sequence[TaskSpec], mode: str = "dag", max_tasks: int = 1000) -> Invalid:
    with pytest.raises(Invalid) as caught:
        build_graph(specs, ids_for(specs), mode=mode, max_tasks=max_tasks)
    return caught.value


class Run:
    """A run driven the way the manager drives it: evaluate, apply, report outcomes."""

    def __init__(self, nodes: tuple[Node, ...], *, fail_fast: bool = False) -> None:
        self.nodes = nodes
        self.fail_fast = fail_fast
        self.by_name = {node.name: node.id for node in nodes}
        self.names = {node.id: node.name for node in nodes}
        self.states = {node.id: "pending" for node in nodes}
        self.started: set[str] = set()

    def step(self) -> Decision:
        decision = evaluate(self.nodes, self.states, self.started, fail_fast=self.fail_fast)
        for task_id in decision.start:
            self.started.add(task_id)
            self.states[task_id] = "running"
        for task_id in decision.skip:
            self.states[task_id] = "skipped"
        for task_id in decision.cancel:
            self.states[task_id] = "cancelled"
        return decision

    def started_now(self) -> list[str]:
        return self.named(self.step().start)

    def named(self, task_ids: Sequence[str]) -> list[str]:
        return [self.names[task_id] for task_id in task_ids]

    def end(self, name: str, state: str) -> None:
        self.states[self.by_name[name]] = state

    def state_of(self, name: str) -> str:
        return self.states[self.by_name[name]]


# ---- graph building ----------------------------------------------------------------


def test_dag_resolves_names_and_ids_in_request_order() -> None:
    nodes = graph(task("b", "a"), task("a"), task("c", "id-0", "a", "a"))
    assert [node.id for node in nodes] == ["id-0", "id-1", "id-2"]
    assert nodes[0].depends_on == ("id-1",)
    assert nodes[2].depends_on == ("id-0", "id-1")  # a repeated reference counts once


def test_sequential_chains_the_list_and_ignores_given_links() -> None:
    nodes = graph(task("a", "nowhere"), task("b", run_if="always"), task("c"), mode="sequential")
    assert [node.depends_on for node in nodes] == [(), ("id-0",), ("id-1",)]
    assert {node.run_if for node in nodes} == {"success"}


def test_parallel_drops_dependencies_and_rejects_inputs_from() -> None:
    nodes = graph(task("a"), task("b", "a", run_if="failure"), mode="parallel")
    assert [(node.depends_on, node.run_if) for node in nodes] == [((), "success")] * 2
    error = invalid([task("a"), task("b", inputs_from={"task": "a"})], mode="parallel")
    assert error.field == "tasks[1].inputs_from" and "'a'" in error.detail


def test_request_shape_errors_name_the_field() -> None:
    assert invalid([]).field == "tasks"
    too_many = invalid([task("a"), task("b"), task("c")], max_tasks=2)
    assert too_many.field == "tasks" and "2" in too_many.detail
    assert invalid([task("a")], mode="fanout").field == "mode"


def test_duplicate_name_is_rejected() -> None:
    error = invalid([task("a"), task("b"), task(""), task("a"), task("")])
    assert error.field == "tasks[3].name" and "'a'" in error.detail


def test_unknown_dependency_is_named() -> None:
    error = invalid([task("a"), task("b", "a"), task("c", "a", "ghost")])
    assert error.field == "tasks[2].depends_on" and "'ghost'" in error.detail


def test_self_dependency_is_a_cycle() -> None:
    error = invalid([task("a"), task("b", "b")])
    assert error.field == "tasks[1].depends_on" and "b → b" in error.detail


def test_cycle_is_named_from_its_first_task() -> None:
    error = invalid([task("x"), task("c", "a", "x"), task("a", "b"), task("b", "c")])
    assert error.field == "tasks[1].depends_on"
    assert error.detail == "cycle: c → a → b → c"


def test_bad_run_if_is_rejected() -> None:
    unknown = task("b", "a").model_copy(update={"run_if": "sometimes"})
    error = invalid([task("a"), unknown])
    assert error.field == "tasks[1].run_if" and "'sometimes'" in error.detail
    assert invalid([task("a", run_if="failure")]).field == "tasks[0].run_if"


def test_inputs_from_must_come_from_a_task_that_finishes_first() -> None:
    nodes = graph(
        task("a"), task("b", "a"), task("c", "b", inputs_from=[{"task": "a", "index": 1}])
    )
    assert nodes[2].inputs_from == (("id-0", 1),)
    sibling = invalid([task("a"), task("b"), task("c", "b", inputs_from={"task": "a"})])
    assert sibling.field == "tasks[2].inputs_from" and "'a'" in sibling.detail
    unknown = invalid([task("a"), task("b", "a", inputs_from={"task": "zz"})])
    assert unknown.field == "tasks[1].inputs_from" and "'zz'" in unknown.detail
    later = invalid([task("a", inputs_from={"task": "b"}), task("b")], mode="sequential")
    assert later.field == "tasks[0].inputs_from"


def test_a_long_chain_in_reverse_order_builds_and_skips_in_one_call() -> None:
    count = 1000
    specs = [task(f"t{i}", *([f"t{i - 1}"] if i else [])) for i in reversed(range(count))]
    run = Run(graph(*specs))
    assert run.started_now() == ["t0"]
    run.end("t0", "failed")
    decision = run.step()
    assert len(decision.skip) == count - 1 and decision.state == "failed"


# ---- evaluation ----------------------------------------------------------------------


def test_sequential_stops_at_the_first_failure() -> None:
    run = Run(graph(task("a"), task("b"), task("c"), task("d"), mode="sequential"))
    assert run.started_now() == ["a"]
    run.end("a", "completed")
    assert run.started_now() == ["b"]
    run.end("b", "failed")
    decision = run.step()
    assert decision.start == () and run.named(decision.skip) == ["c", "d"]
    assert decision.state == "failed"


def test_parallel_starts_everything_at_once() -> None:
    run = Run(graph(task("a"), task("b"), task("c"), mode="parallel"))
    decision = run.step()
    assert run.named(decision.start) == ["a", "b", "c"] and decision.state == "running"
    for name, outcome in (("a", "completed"), ("b", "completed"), ("c", "completed")):
        run.end(name, outcome)
    assert run.step() == Decision(start=(), skip=(), cancel=(), state="completed")


def test_diamond_joins_and_passes_results_downstream() -> None:
    d = task("d", "b", "c", inputs_from=[{"task": "b", "index": 0}, {"task": "c", "index": 1}])
    run = Run(graph(d, task("c", "a"), task("b", "a"), task("a")))
    assert run.started_now() == ["a"]
    run.end("a", "completed")
    assert run.started_now() == ["c", "b"]
    run.end("b", "completed")
    assert run.started_now() == []
    run.end("c", "completed")
    assert run.started_now() == ["d"]
    results = {run.by_name["b"]: [5], run.by_name["c"]: [7, 9]}
    assert resolve_inputs(run.nodes[0], results) == [5, 9]
    run.end("d", "completed")
    assert run.step().state == "completed"


def _branches() -> Run:
    return Run(graph(task("a"), task("next", "a"), task("on_error", "a", run_if="failure")))


def test_failure_branch_runs_only_on_failure() -> None:
    happy = _branches()
    happy.started_now()
    happy.end("a", "completed")
    decision = happy.step()
    assert happy.named(decision.start) == ["next"] and happy.named(decision.skip) == ["on_error"]

    unhappy = _branches()
    unhappy.started_now()
    unhappy.end("a", "failed")
    decision = unhappy.step()
    assert unhappy.named(decision.start) == ["on_error"] and unhappy.named(decision.skip) == [
        "next"
    ]
    unhappy.end("on_error", "completed")
    assert unhappy.step().state == "failed"  # a handled failure still fails the run


def test_failure_branch_sees_a_failure_further_up_the_chain() -> None:
    run = Run(
        graph(task("a"), task("b", "a"), task("c", "b"), task("report", "c", run_if="failure"))
    )
    run.started_now()
    run.end("a", "failed")
    decision = run.step()
    assert run.named(decision.skip) == ["b", "c"] and run.named(decision.start) == ["report"]


def test_a_completed_handler_absorbs_the_failure() -> None:
    run = Run(
        graph(
            task("a"),
            task("fix", "a", run_if="failure"),
            task("after", "fix", run_if="failure"),
        )
    )
    run.started_now()
    run.end("a", "failed")
    assert run.started_now() == ["fix"]
    run.end("fix", "completed")
    decision = run.step()
    assert run.named(decision.skip) == ["after"] and decision.state == "failed"


def test_cancelled_dependency_is_not_a_failure_but_always_runs() -> None:
    run = Run(
        graph(
            task("a"),
            task("on_error", "a", run_if="failure"),
            task("cleanup", "a", run_if="always"),
        )
    )
    run.started_now()
    run.end("a", "cancelled")
    decision = run.step()
    assert run.named(decision.skip) == ["on_error"] and run.named(decision.start) == ["cleanup"]
    run.end("cleanup", "completed")
    assert run.step().state == "cancelled"


def test_always_runs_after_a_failure() -> None:
    run = Run(graph(task("a"), task("b", "a"), task("cleanup", "b", run_if="always")))
    run.started_now()
    run.end("a", "failed")
    decision = run.step()
    assert run.named(decision.skip) == ["b"] and run.named(decision.start) == ["cleanup"]
    assert decision.state == "running"
    run.end("cleanup", "completed")
    assert run.step().state == "failed"


def test_skip_propagates_down_a_chain_of_five_in_one_call() -> None:
    chain = [task("e", "d"), task("d", "c"), task("c", "b"), task("b", "a"), task("a", "root")]
    run = Run(graph(*chain, task("root")))
    assert run.started_now() == ["root"]
    run.end("root", "failed")
    decision = run.step()
    assert run.named(decision.skip) == ["e", "d", "c", "b", "a"]
    assert decision.start == () and decision.state == "failed"
    assert run.step() == Decision(start=(), skip=(), cancel=(), state="failed")


def test_fail_fast_cancels_the_rest_and_starts_nothing() -> None:
    nodes = graph(
        task("slow"),
        task("bad"),
        task("later", "slow"),
        task("on_error", "bad", run_if="failure"),
        task("done"),
    )
    run = Run(nodes, fail_fast=True)
    assert run.started_now() == ["slow", "bad", "done"]
    run.end("done", "completed")
    run.end("bad", "failed")
    decision = run.step()
    assert decision.start == () and decision.skip == ()
    assert run.named(decision.cancel) == ["slow", "later", "on_error"]
    assert decision.state == "failed"
    assert run.step() == Decision(start=(), skip=(), cancel=(), state="failed")


def test_queued_tasks_are_not_started_twice() -> None:
    nodes = graph(task("a"), task("b", "a"))
    pending = {"id-0": "pending", "id-1": "pending"}
    assert evaluate(nodes, pending, set(), fail_fast=False).start == ("id-0",)
    queued = evaluate(nodes, pending, {"id-0"}, fail_fast=False)
    assert queued == Decision(start=(), skip=(), cancel=(), state="running")


def test_stopped_run_is_cancelled() -> None:
    nodes = graph(task("a"), task("b", "a"), task("c", "a", run_if="always"))
    stopped = {"id-0": "completed", "id-1": "cancelled", "id-2": "cancelled"}
    assert evaluate(nodes, stopped, {"id-0", "id-1"}, fail_fast=False) == Decision(
        start=(), skip=(), cancel=(), state="cancelled"
    )


def test_resolve_inputs_reports_missing_results() -> None:
    node = Node("c", "c", ("a",), "success", (("a", 2),))
    with pytest.raises(Invalid, match="returned 1 value") as short:
        resolve_inputs(node, {"a": [1]})
    assert short.value.field == "inputs_from"
    with pytest.raises(Invalid, match="no list of results"):
        resolve_inputs(node, {"a": {"stdout": ""}})
    with pytest.raises(Invalid, match="no list of results"):
        resolve_inputs(node, {})
    assert resolve_inputs(node, {"a": (1, 2, 3)}) == [3]


# ---- properties ------------------------------------------------------------------------

OUTCOMES = ("completed", "completed", "failed", "cancelled")


@st.composite
def dags(draw: st.DrawFn) -> list[TaskSpec]:
    """A random DAG in a random request order; links by name or by id at random."""
    size = draw(st.integers(1, 9))
    order = draw(st.permutations(range(size)))  # order[k]: request position of node k
    specs: list[TaskSpec | None] = [None] * size
    for k in range(size):
        deps = draw(st.lists(st.integers(0, k - 1), unique=True, max_size=3)) if k else []
        refs = [f"n{d}" if draw(st.booleans()) else f"id-{order[d]}" for d in deps]
        run_if = draw(
            st.sampled_from(("success", "failure", "always") if deps else ("success", "always"))
        )
        specs[order[k]] = task(f"n{k}", *refs, run_if=run_if)
    return [spec for spec in specs if spec is not None]


@settings(deadline=None)
@given(dags(), st.booleans(), st.data())
def test_random_runs_end_with_every_task_terminal(
    specs: list[TaskSpec], fail_fast: bool, data: st.DataObject
) -> None:
    run = Run(build_graph(specs, ids_for(specs)), fail_fast=fail_fast)
    by_id = {node.id: node for node in run.nodes}
    for _ in range(2 * len(specs) + 2):
        before = dict(run.states)
        started_before = set(run.started)
        decision = run.step()
        for task_id in decision.start:
            node = by_id[task_id]
            # a dependency may have been skipped by this very decision: read the states after it
            deps = {run.states[dep] for dep in node.depends_on}
            assert task_id not in started_before
            assert deps <= TERMINAL_STATES
            if node.run_if == "success":
                assert deps <= {"completed"}
            if node.run_if == "failure":
                assert deps & {"failed", "skipped"}
        assert not (fail_fast and "failed" in before.values() and decision.start)
        for task_id in decision.skip:
            assert before[task_id] == "pending" and task_id not in run.started
            assert by_id[task_id].run_if != "always"
        if set(run.states.values()) <= TERMINAL_STATES:
            break
        assert decision.state == "running"
        running = sorted(task_id for task_id, state in run.states.items() if state == "running")
        assert running, "nothing runs yet tasks are waiting: the run is stuck"
        ending = data.draw(st.lists(st.sampled_from(running), min_size=1, unique=True))
        for task_id in ending:
            run.states[task_id] = data.draw(st.sampled_from(OUTCOMES))
    states = set(run.states.values())
    assert states <= TERMINAL_STATES
    final = evaluate(run.nodes, run.states, run.started, fail_fast=fail_fast)
    assert final.start == final.skip == final.cancel == ()
    expected = (
        "failed" if "failed" in states else "cancelled" if "cancelled" in states else "completed"
    )
    assert final.state == expected
    for node in run.nodes:
        if run.states[node.id] == "skipped" and node.run_if == "success":
            assert any(run.states[dep] != "completed" for dep in node.depends_on)
        if run.states[node.id] == "skipped" and node.run_if == "failure":
            assert "failed" not in {run.states[dep] for dep in node.depends_on}
