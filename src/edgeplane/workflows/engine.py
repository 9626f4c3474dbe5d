"""Decide what a job or workflow does next, from its graph and its tasks' states alone.

``evaluate`` is pure (no I/O, no clock): the manager calls it whenever a task of the run
changes state, applies the :class:`Decision` (start, skip, cancel) and stores the state.
Calling it again before anything else changes returns an empty decision, so a repeated
or redelivered event is harmless.

Rules, for a task that is waiting (``pending`` and not started) once every dependency is
terminal:

- ``success`` starts when every dependency ``completed``, else it is skipped;
- ``failure`` starts when a dependency failed, or was skipped because of a failure
  further up (as GitHub Actions' ``failure()``: a handler at the end of a chain sees a
  failure at its start); a cancelled dependency is not a failure, and a task that ran
  after a failure (a handler that completed) absorbs it. Otherwise it is skipped;
- ``always`` starts whatever the dependencies' outcome, a cancelled one included.

A skip is decided in the same call for the whole chain below it. With ``fail_fast``, the
first failure cancels every task not yet terminal (running ones included) and nothing
starts, failure handlers included.

The run's state: ``failed`` once every task is terminal and any failed (a failure that a
``failure`` handler dealt with still counts), else ``cancelled`` if any was cancelled,
else ``completed`` (skipped tasks are fine); before that ``running``. A run is ``pending``
only until its first evaluation, which always starts or ends something (a task with no
dependency is decidable at once).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any

from edgeplane.errors import Invalid
from edgeplane.model import TERMINAL_STATES
from edgeplane.workflows.graph import Node, topological_order


@dataclass(frozen=True)
class Decision:
    """What to do now; every tuple is in request order."""

    #: waiting tasks whose dependencies are done and whose run_if is met
    start: tuple[str, ...]
    #: waiting tasks whose run_if can never be met
    skip: tuple[str, ...]
    #: tasks not yet terminal that fail_fast stops
    cancel: tuple[str, ...]
    #: the run's state once this decision is applied
    state: str


def evaluate(
    nodes: Sequence[Node],
    states: Mapping[str, str],
    started: Set[str],
    *,
    fail_fast: bool,
) -> Decision:
    """The next step of the run whose tasks are ``nodes``; ``states`` has every task's
    state and ``started`` the ids already started (a started ``pending`` task is queued,
    not waiting)."""
    if fail_fast and any(states[node.id] == "failed" for node in nodes):
        cancel = tuple(node.id for node in nodes if states[node.id] not in TERMINAL_STATES)
        return Decision(start=(), skip=(), cancel=cancel, state="failed")
    after = dict(states)
    starting: set[str] = set()
    failure_seen: set[str] = set()  # failed, or skipped because of a failure upstream
    for node in topological_order(nodes):
        waiting = after[node.id] == "pending" and node.id not in started
        if waiting and all(after[dep] in TERMINAL_STATES for dep in node.depends_on):
            if _condition_met(node, after, failure_seen):
                starting.add(node.id)
            else:
                after[node.id] = "skipped"
        if after[node.id] == "failed" or (
            after[node.id] == "skipped" and not failure_seen.isdisjoint(node.depends_on)
        ):
            failure_seen.add(node.id)
    start = tuple(node.id for node in nodes if node.id in starting)
    skip = tuple(node.id for node in nodes if after[node.id] != states[node.id])
    return Decision(start=start, skip=skip, cancel=(), state=_run_state(nodes, after))


def resolve_inputs(node: Node, results_by_id: Mapping[str, Any]) -> list[Any]:
    """The inputs ``node`` takes from its sources' results, to append to its own
    ``inputs`` when it starts. A source that left no such result (it did not complete,
    or returned fewer values) is an error in the run, not a silent ``None``."""
    values: list[Any] = []
    for source, index in node.inputs_from:
        results = results_by_id.get(source)
        if not isinstance(results, list | tuple):
            raise Invalid(
                f"task {node.label!r} reads result {index} of task {source!r}, "
                f"which has no list of results (got {type(results).__name__})",
                field="inputs_from",
            )
        if not 0 <= index < len(results):
            raise Invalid(
                f"task {node.label!r} reads result {index} of task {source!r}, "
                f"which returned {len(results)} value(s)",
                field="inputs_from",
            )
        values.append(results[index])
    return values


def _condition_met(node: Node, states: Mapping[str, str], failure_seen: Set[str]) -> bool:
    if node.run_if == "always":
        return True
    if node.run_if == "failure":
        return not failure_seen.isdisjoint(node.depends_on)
    return all(states[dep] == "completed" for dep in node.depends_on)


def _run_state(nodes: Sequence[Node], states: Mapping[str, str]) -> str:
    found = {states[node.id] for node in nodes}
    if not found <= TERMINAL_STATES:
        return "running"
    if "failed" in found:
        return "failed"
    return "cancelled" if "cancelled" in found else "completed"
