"""Limits and constraints left out are one shared instance (model/task.py: NO_LIMITS,
NO_CONSTRAINTS), which is safe only while nobody can change it for the others."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgeplane.model import Task, TaskSpec
from edgeplane.model.task import NO_CONSTRAINTS, NO_LIMITS, Limits, Spread
from edgeplane.protocol import Assignment
from edgeplane.runtimes import RunSpec


def test_models_that_leave_them_out_share_the_defaults() -> None:
    spec = TaskSpec.model_validate({"name": "a"})
    task = Task.model_validate_json('{"id": "t"}')
    assignment = Assignment.model_validate({"task_id": "t", "attempt": 1, "runtime": "wasm"})
    run = RunSpec.model_validate({"task_id": "t", "attempt": 1, "runtime": "wasm"})
    assert spec.limits is NO_LIMITS and task.limits is NO_LIMITS
    assert assignment.limits is NO_LIMITS and run.limits is NO_LIMITS
    assert spec.constraints is NO_CONSTRAINTS and task.constraints is NO_CONSTRAINTS
    # left out, they are not set: a dump without unset fields has neither
    assert "limits" not in spec.model_dump(exclude_unset=True)
    assert "constraints" not in spec.model_dump(exclude_unset=True)


def test_the_shared_defaults_cannot_be_changed() -> None:
    with pytest.raises(ValidationError, match="frozen"):
        NO_LIMITS.fuel = 1
    with pytest.raises(ValidationError, match="frozen"):
        NO_CONSTRAINTS.spread = Spread(group="g")
    assert Limits() == NO_LIMITS and NO_CONSTRAINTS.spread is None


def test_given_limits_are_not_the_shared_ones() -> None:
    spec = TaskSpec.model_validate({"name": "a", "limits": {"fuel": 5}})
    assert spec.limits.fuel == 5 and NO_LIMITS.fuel is None
    changed = spec.limits.model_copy(update={"fuel": 6})
    assert changed.fuel == 6 and spec.limits.fuel == 5
