"""Ranges of a task's ``limits``: refused where they come in, kept where they are stored."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from edgeplane.limits import MAX_FUEL, MAX_MEMORY_MB, MAX_TIMEOUT_S
from edgeplane.model import Task, TaskPatch, TaskSpec
from edgeplane.protocol import Assignment

OUT_OF_RANGE: list[tuple[str, Any]] = [
    ("fuel", 2**64),
    ("fuel", MAX_FUEL + 1),
    ("fuel", 0),
    ("memory_mb", 2**53),
    ("memory_mb", 0),
    ("timeout_s", 1e30),
    ("timeout_s", "inf"),
    ("timeout_s", "nan"),
    ("timeout_s", 0),
    ("cpu_shares", 2**40),
    ("cpu_shares", 1),
    ("pids", 2**63),
    ("pids", 0),
]


@pytest.mark.parametrize(("field", "value"), OUT_OF_RANGE)
def test_out_of_range_names_the_field(field: str, value: Any) -> None:
    for validate in (
        lambda: TaskSpec.model_validate({"limits": {field: value}}),
        lambda: TaskPatch.model_validate({"limits": {field: value}}),
        lambda: Assignment.model_validate(
            {"task_id": "t", "attempt": 1, "runtime": "wasm", "limits": {field: value}}
        ),
    ):
        with pytest.raises(ValidationError) as caught:
            validate()
        assert caught.value.errors()[0]["loc"] == ("limits", field)


def test_the_edges_are_accepted() -> None:
    spec = TaskSpec.model_validate(
        {"limits": {"fuel": MAX_FUEL, "memory_mb": MAX_MEMORY_MB, "timeout_s": MAX_TIMEOUT_S}}
    )
    assert spec.limits.fuel == MAX_FUEL


@given(
    field=st.sampled_from(["fuel", "memory_mb", "timeout_s", "cpu_shares", "pids"]),
    value=st.integers() | st.floats() | st.sampled_from(["inf", "nan", None]),
)
def test_a_stored_task_loads_whatever_its_limits(field: str, value: Any) -> None:
    """A document stored before the ranges still loads (and reads back), so it can be
    listed and deleted and cannot stop a manager from starting."""
    stored = json.dumps({"id": "old", "limits": {"pids": 5, field: value}})
    task = Task.model_validate_json(stored)
    again = Task.model_validate_json(task.model_dump_json(warnings=False))
    assert again.id == "old"
    assert field == "pids" or again.limits.pids == 5


def test_a_stored_task_with_limits_of_the_wrong_shape_is_still_refused() -> None:
    with pytest.raises(ValidationError):
        Task.model_validate({"id": "x", "limits": [1]})
