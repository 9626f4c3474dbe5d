"""Build and validate the task graph of a job or a workflow, before anything is stored.

``build_graph`` turns the request's task specs into :class:`Node` s whose references are
resolved to task ids, and rejects what could never run as asked (a cycle, an unknown or
duplicate name, an input read from a task that does not finish first) with an
:class:`~edgeplane.errors.Invalid` naming the offending field, so a bad request creates
nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edgeplane.errors import Invalid
from edgeplane.model import TaskSpec

MODES: tuple[str, ...] = ("parallel", "sequential", "dag")
RUN_IF: tuple[str, ...] = ("success", "failure", "always")


@dataclass(frozen=True)
class Node:
    """One task of a graph with its references resolved to task ids."""

    id: str
    #: may be "" (then only its id can be referenced)
    name: str
    depends_on: tuple[str, ...]
    #: "success" | "failure" | "always"
    run_if: str
    #: (source task id, index into its results)
    inputs_from: tuple[tuple[str, int], ...] = ()

    @property
    def label(self) -> str:
        """What error messages call the task: its name, else its id."""
        return self.name or self.id


def build_graph(
    specs: Sequence[TaskSpec],
    ids: Sequence[str],
    *,
    mode: str = "dag",
    max_tasks: int = 1000,
) -> tuple[Node, ...]:
    """Resolve and validate ``specs`` (whose task ids are ``ids``) into nodes, in request order.

    ``sequential`` chains each task to the previous one (``run_if`` success) and
    ``parallel`` drops every dependency; both ignore the given ``depends_on`` and
    ``run_if``. ``dag`` uses them as given. References are a task's name within the
    request or one of ``ids``.
    """
    if mode not in MODES:
        raise Invalid(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}", field="mode")
    if not specs:
        raise Invalid("a job or workflow needs at least one task", field="tasks")
    if len(specs) > max_tasks:
        raise Invalid(f"{len(specs)} tasks is more than the limit of {max_tasks}", field="tasks")
    if len(ids) != len(specs):
        raise ValueError(f"{len(ids)} ids given for {len(specs)} tasks")
    by_ref = _references(specs, ids)
    deps: list[tuple[str, ...]]
    run_if: list[str]
    if mode == "dag":
        deps = [_resolve_deps(i, spec, ids[i], by_ref) for i, spec in enumerate(specs)]
        run_if = [_run_if(i, spec, bool(deps[i])) for i, spec in enumerate(specs)]
    elif mode == "sequential":
        deps = [(ids[i - 1],) if i else () for i in range(len(specs))]
        run_if = ["success"] * len(specs)
    else:
        deps = [() for _ in specs]
        run_if = ["success"] * len(specs)
    nodes = tuple(
        Node(ids[i], spec.name, deps[i], run_if[i], _resolve_inputs(i, spec, by_ref))
        for i, spec in enumerate(specs)
    )
    _reject_cycle(nodes)
    _reject_unordered_inputs(nodes)
    return nodes


def topological_order(nodes: Sequence[Node]) -> list[Node]:
    """``nodes`` ordered so that every node comes after all of its dependencies."""
    position = {node.id: i for i, node in enumerate(nodes)}
    waiting = [len(node.depends_on) for node in nodes]
    dependants: list[list[int]] = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        for dep in node.depends_on:
            dependants[position[dep]].append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    order: list[Node] = []
    while ready:
        i = ready.pop()
        order.append(nodes[i])
        for j in dependants[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
    if len(order) != len(nodes):
        raise ValueError("the graph has a cycle")
    return order


def _references(specs: Sequence[TaskSpec], ids: Sequence[str]) -> dict[str, str]:
    """Name or id → task id; rejects a name used twice. A name wins over an equal id."""
    by_ref = {task_id: task_id for task_id in ids}
    named: dict[str, int] = {}
    for i, spec in enumerate(specs):
        if not spec.name:
            continue
        if spec.name in named:
            raise Invalid(
                f"duplicate task name {spec.name!r} (also tasks[{named[spec.name]}])",
                field=f"tasks[{i}].name",
            )
        named[spec.name] = i
        by_ref[spec.name] = ids[i]
    return by_ref


def _resolve_deps(
    i: int, spec: TaskSpec, task_id: str, by_ref: Mapping[str, str]
) -> tuple[str, ...]:
    resolved: dict[str, None] = {}  # an ordered set: a repeated reference counts once
    for ref in spec.depends_on:
        if ref not in by_ref:
            raise Invalid(f"unknown dependency {ref!r}", field=f"tasks[{i}].depends_on")
        resolved[by_ref[ref]] = None
    if task_id in resolved:
        label = spec.name or task_id
        raise Invalid(
            f"{label!r} depends on itself (cycle: {label} → {label})",
            field=f"tasks[{i}].depends_on",
        )
    return tuple(resolved)


def _run_if(i: int, spec: TaskSpec, has_deps: bool) -> str:
    if spec.run_if not in RUN_IF:
        raise Invalid(
            f"unknown run_if {spec.run_if!r}; expected one of {', '.join(RUN_IF)}",
            field=f"tasks[{i}].run_if",
        )
    if spec.run_if == "failure" and not has_deps:
        raise Invalid(
            "run_if 'failure' needs depends_on: with no dependency it could never run",
            field=f"tasks[{i}].run_if",
        )
    return spec.run_if


def _resolve_inputs(
    i: int, spec: TaskSpec, by_ref: Mapping[str, str]
) -> tuple[tuple[str, int], ...]:
    resolved: list[tuple[str, int]] = []
    for ref in spec.inputs_from:
        if ref.task not in by_ref:
            raise Invalid(
                f"inputs_from names unknown task {ref.task!r}", field=f"tasks[{i}].inputs_from"
            )
        resolved.append((by_ref[ref.task], ref.index))
    return tuple(resolved)


def _reject_cycle(nodes: Sequence[Node]) -> None:
    """Raise naming the first cycle found, written from its earliest task in request order
    along ``depends_on`` (``a → b`` means a depends on b)."""
    position = {node.id: i for i, node in enumerate(nodes)}
    colour = [0] * len(nodes)  # 0 unseen, 1 on the current path, 2 done
    for root in range(len(nodes)):
        if colour[root]:
            continue
        path = [root]
        branches = [iter(nodes[root].depends_on)]
        colour[root] = 1
        while path:
            dep = next(branches[-1], None)
            if dep is None:
                colour[path.pop()] = 2
                branches.pop()
                continue
            j = position[dep]
            if colour[j] == 1:
                cycle = path[path.index(j) :]
                first = cycle.index(min(cycle))
                ordered = [*cycle[first:], *cycle[:first], min(cycle)]
                labels = " → ".join(nodes[k].label for k in ordered)
                raise Invalid(f"cycle: {labels}", field=f"tasks[{ordered[0]}].depends_on")
            if colour[j] == 0:
                colour[j] = 1
                path.append(j)
                branches.append(iter(nodes[j].depends_on))


def _reject_unordered_inputs(nodes: Sequence[Node]) -> None:
    """A task may only read results of its (indirect) dependencies: they finish first."""
    by_id = {node.id: node for node in nodes}
    for i, node in enumerate(nodes):
        if not node.inputs_from:
            continue
        upstream = _ancestors(node, by_id)
        for source, _ in node.inputs_from:
            if source not in upstream:
                raise Invalid(
                    f"{node.label!r} reads inputs from {by_id[source].label!r}, which is not "
                    "one of its dependencies (direct or indirect)",
                    field=f"tasks[{i}].inputs_from",
                )


def _ancestors(node: Node, by_id: Mapping[str, Node]) -> set[str]:
    seen: set[str] = set()
    todo = list(node.depends_on)
    while todo:
        dep = todo.pop()
        if dep not in seen:
            seen.add(dep)
            todo.extend(by_id[dep].depends_on)
    return seen
